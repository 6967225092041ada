//! Networks and device types. Both are named groups of devices with identical storage, so one
//! implementation serves both, parameterised by `GroupKind`.

use super::memo::Changes;
use super::scope::push_id_set;
use super::user::{group_from_row, push_paging};
use super::{Sql, Store};
use crate::auth::IdSet;
use crate::error::Result;
use crate::model::{GroupKind, Network};

impl GroupKind {
    fn table(self) -> &'static str {
        match self {
            GroupKind::Network => "network",
            GroupKind::DeviceType => "device_type",
        }
    }
    /// The device column referring to this group.
    pub(crate) fn device_column(self) -> &'static str {
        match self {
            GroupKind::Network => "network_id",
            GroupKind::DeviceType => "device_type_id",
        }
    }
    fn assignment_table(self) -> (&'static str, &'static str) {
        match self {
            GroupKind::Network => ("user_network", "network_id"),
            GroupKind::DeviceType => ("user_device_type", "device_type_id"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GroupListQuery {
    pub name: Option<String>,
    pub name_pattern: Option<String>,
    /// `id` or `name`.
    pub sort_field: Option<&'static str>,
    pub descending: bool,
    pub take: Option<i64>,
    pub skip: Option<i64>,
    /// Restrict to groups assigned to this user.
    pub assigned_to_user: Option<i64>,
    /// Restrict to these ids (token scope).
    pub ids: Option<IdSet>,
}

impl GroupListQuery {
    fn push_where(&self, kind: GroupKind, qb: &mut Sql) {
        qb.push(" WHERE 1=1");
        if let Some(p) = &self.name_pattern {
            qb.push(" AND name LIKE ").push_bind(p);
        } else if let Some(n) = &self.name {
            qb.push(" AND name = ").push_bind(n);
        }
        if let Some(user) = self.assigned_to_user {
            let (table, col) = kind.assignment_table();
            qb.push(&format!(" AND id IN (SELECT {col} FROM {table} WHERE user_id = "));
            qb.push_bind(user).push(")");
        }
        if let Some(ids) = &self.ids {
            push_id_set(qb, "id", ids);
        }
    }
}

impl Store {
    pub async fn group_get(&self, kind: GroupKind, id: i64) -> Result<Option<Network>> {
        let sql = Sql::new(format!("SELECT id, name, description FROM {} WHERE id = $1", kind.table())).bind(id);
        self.db.fetch_optional(sql, group_from_row).await
    }

    pub async fn group_by_name(&self, kind: GroupKind, name: &str) -> Result<Option<Network>> {
        let sql = Sql::new(format!("SELECT id, name, description FROM {} WHERE name = $1", kind.table())).bind(name);
        self.db.fetch_optional(sql, group_from_row).await
    }

    pub async fn group_list(&self, kind: GroupKind, q: &GroupListQuery) -> Result<Vec<Network>> {
        let mut qb = Sql::new(format!("SELECT id, name, description FROM {}", kind.table()));
        q.push_where(kind, &mut qb);
        qb.push(&format!(
            " ORDER BY {} {}, id",
            q.sort_field.unwrap_or("id"),
            if q.descending { "DESC" } else { "ASC" }
        ));
        push_paging(&mut qb, q.take, q.skip);
        self.db.fetch_all(qb, group_from_row).await
    }

    pub async fn group_count(&self, kind: GroupKind, q: &GroupListQuery) -> Result<i64> {
        let mut qb = Sql::new(format!("SELECT COUNT(*) FROM {}", kind.table()));
        q.push_where(kind, &mut qb);
        self.db.fetch_one(qb, |r| r.i64(0)).await
    }

    /// Lowest id of all groups of this kind (the default device type for "all types" principals).
    pub async fn group_lowest_id(&self, kind: GroupKind, among: &IdSet) -> Result<Option<i64>> {
        let mut qb = Sql::new(format!("SELECT MIN(id) FROM {} WHERE 1=1", kind.table()));
        push_id_set(&mut qb, "id", among);
        self.db.fetch_one(qb, |r| r.opt_i64(0)).await
    }

    pub async fn group_insert(&self, kind: GroupKind, name: &str, description: Option<&str>) -> Result<i64> {
        let sql = Sql::new(format!("INSERT INTO {} (name, description) VALUES ($1, $2) RETURNING id", kind.table()))
            .bind(name)
            .bind(description);
        self.db.fetch_one(sql, |r| r.i64(0)).await
    }

    pub async fn group_update(&self, kind: GroupKind, g: &Network) -> Result<()> {
        let sql = Sql::new(format!(
            "UPDATE {} SET name = $1, description = $2, entity_version = entity_version + 1 WHERE id = $3",
            kind.table()
        ))
        .bind(&g.name)
        .bind(&g.description)
        .bind(g.id);
        self.db.execute(sql).await?;
        Ok(())
    }

    /// Deletes the group, its assignments and devices in one transaction, then the devices' messages
    /// in bounded batches (the messages are unreachable once their device is gone).
    pub async fn group_delete(&self, kind: GroupKind, id: i64) -> Result<()> {
        let col = kind.device_column();
        let db = self.db.clone();
        // Devices go, and with the group the users' assignments to it.
        let devices = self
            .changing(Changes::Both, async move {
                let mut tx = db.begin().await?;
                let delete = Sql::new(format!("DELETE FROM device WHERE {col} = $1 RETURNING device_id")).bind(id);
                let devices = tx.fetch_all(delete, |r| r.text(0)).await?;
                tx.execute(Sql::new(format!("DELETE FROM {} WHERE id = $1", kind.table())).bind(id)).await?;
                tx.commit().await?;
                Ok(devices)
            })
            .await?;
        for d in &devices {
            self.device_messages_delete(d).await?;
        }
        Ok(())
    }
}
