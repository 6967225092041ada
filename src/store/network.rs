//! Networks and device types. Both are named groups of devices with identical storage, so one
//! implementation serves both, parameterised by `GroupKind`.

use sqlx::{QueryBuilder, Row, Sqlite};

use super::scope::push_id_set;
use super::user::{group_from_row, push_paging};
use super::Store;
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
    fn push_where(&self, kind: GroupKind, qb: &mut QueryBuilder<'_, Sqlite>) {
        qb.push(" WHERE 1=1");
        if let Some(p) = &self.name_pattern {
            qb.push(" AND name LIKE ").push_bind(p.clone());
        } else if let Some(n) = &self.name {
            qb.push(" AND name = ").push_bind(n.clone());
        }
        if let Some(user) = self.assigned_to_user {
            let (table, col) = kind.assignment_table();
            qb.push(format!(" AND id IN (SELECT {col} FROM {table} WHERE user_id = "));
            qb.push_bind(user).push(")");
        }
        if let Some(ids) = &self.ids {
            push_id_set(qb, "id", ids);
        }
    }
}

impl Store {
    pub async fn group_get(&self, kind: GroupKind, id: i64) -> Result<Option<Network>> {
        let row = sqlx::query(&format!("SELECT id, name, description FROM {} WHERE id = ?", kind.table()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(group_from_row))
    }

    pub async fn group_by_name(&self, kind: GroupKind, name: &str) -> Result<Option<Network>> {
        let row = sqlx::query(&format!("SELECT id, name, description FROM {} WHERE name = ?", kind.table()))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(group_from_row))
    }

    pub async fn group_list(&self, kind: GroupKind, q: &GroupListQuery) -> Result<Vec<Network>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT id, name, description FROM {}", kind.table()));
        q.push_where(kind, &mut qb);
        qb.push(format!(
            " ORDER BY {} {}, id",
            q.sort_field.unwrap_or("id"),
            if q.descending { "DESC" } else { "ASC" }
        ));
        push_paging(&mut qb, q.take, q.skip);
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(group_from_row).collect())
    }

    pub async fn group_count(&self, kind: GroupKind, q: &GroupListQuery) -> Result<i64> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT COUNT(*) FROM {}", kind.table()));
        q.push_where(kind, &mut qb);
        Ok(qb.build().fetch_one(&self.pool).await?.get(0))
    }

    /// Lowest id of all groups of this kind (the default device type for "all types" principals).
    pub async fn group_lowest_id(&self, kind: GroupKind, among: &IdSet) -> Result<Option<i64>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT MIN(id) FROM {} WHERE 1=1", kind.table()));
        push_id_set(&mut qb, "id", among);
        Ok(qb.build().fetch_one(&self.pool).await?.get(0))
    }

    pub async fn group_insert(&self, kind: GroupKind, name: &str, description: Option<&str>) -> Result<i64> {
        let row = sqlx::query(&format!("INSERT INTO {} (name, description) VALUES (?, ?) RETURNING id", kind.table()))
            .bind(name)
            .bind(description)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }

    pub async fn group_update(&self, kind: GroupKind, g: &Network) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE {} SET name = ?, description = ?, entity_version = entity_version + 1 WHERE id = ?",
            kind.table()
        ))
        .bind(&g.name)
        .bind(&g.description)
        .bind(g.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the group, its assignments and devices in one transaction, then the devices' messages
    /// in bounded batches (the messages are unreachable once their device is gone).
    pub async fn group_delete(&self, kind: GroupKind, id: i64) -> Result<()> {
        let col = kind.device_column();
        let mut tx = self.pool.begin().await?;
        let devices: Vec<String> = sqlx::query(&format!("DELETE FROM device WHERE {col} = ? RETURNING device_id"))
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        sqlx::query(&format!("DELETE FROM {} WHERE id = ?", kind.table())).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        for d in &devices {
            self.device_messages_delete(d).await?;
        }
        Ok(())
    }
}
