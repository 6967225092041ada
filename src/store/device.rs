//! Devices.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::scope::DeviceScope;
use super::user::push_paging;
use super::{json_column, json_text, Store};
use crate::error::Result;
use crate::model::Device;
use crate::model::GroupKind;

const COLUMNS: &str = "d.device_id, d.name, d.data, d.network_id, d.device_type_id, d.blocked";

fn device_from_row(r: &SqliteRow) -> Device {
    Device {
        id: r.get("device_id"),
        name: r.get("name"),
        data: json_column(r.get("data")),
        network_id: r.get("network_id"),
        device_type_id: r.get("device_type_id"),
        is_blocked: r.get("blocked"),
    }
}

#[derive(Debug, Clone)]
pub struct DeviceListQuery {
    pub name: Option<String>,
    pub name_pattern: Option<String>,
    pub network_id: Option<i64>,
    pub network_name: Option<String>,
    /// Column to sort by: `d.name`, `n.name`, `t.name`.
    pub sort_column: Option<&'static str>,
    pub descending: bool,
    pub take: Option<i64>,
    pub skip: Option<i64>,
    pub scope: DeviceScope,
}

impl DeviceListQuery {
    fn push_where(&self, qb: &mut QueryBuilder<'_, Sqlite>) {
        qb.push(" WHERE 1=1");
        if let Some(p) = &self.name_pattern {
            qb.push(" AND d.name LIKE ").push_bind(p.clone());
        } else if let Some(n) = &self.name {
            qb.push(" AND d.name = ").push_bind(n.clone());
        }
        if let Some(id) = self.network_id {
            qb.push(" AND d.network_id = ").push_bind(id);
        }
        if let Some(n) = &self.network_name {
            qb.push(" AND n.name = ").push_bind(n.clone());
        }
        self.scope.push_conditions(qb, "d.network_id", "d.device_type_id");
    }
}

/// Fields written by a device update; `None` = leave as is, except `data`, which is always replaced.
#[derive(Debug, Clone, Default)]
pub struct DeviceUpdate {
    pub name: Option<String>,
    pub data: Option<serde_json::Value>,
    pub network_id: Option<i64>,
    pub device_type_id: Option<i64>,
    pub is_blocked: Option<bool>,
}

const FROM: &str =
    " FROM device d LEFT JOIN network n ON n.id = d.network_id LEFT JOIN device_type t ON t.id = d.device_type_id";

impl Store {
    pub async fn device_get(&self, device_id: &str) -> Result<Option<Device>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM device d WHERE d.device_id = ?"))
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(device_from_row))
    }

    pub async fn device_list(&self, q: &DeviceListQuery) -> Result<Vec<Device>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS}{FROM}"));
        q.push_where(&mut qb);
        qb.push(format!(
            " ORDER BY {} {}, d.id",
            q.sort_column.unwrap_or("d.id"),
            if q.descending { "DESC" } else { "ASC" }
        ));
        push_paging(&mut qb, q.take, q.skip);
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(device_from_row).collect())
    }

    pub async fn device_count(&self, q: &DeviceListQuery) -> Result<i64> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT COUNT(*){FROM}"));
        q.push_where(&mut qb);
        Ok(qb.build().fetch_one(&self.pool).await?.get(0))
    }

    /// Devices in a network or of a device type, within a scope.
    pub async fn devices_in_group(&self, kind: GroupKind, group_id: i64, scope: &DeviceScope) -> Result<Vec<Device>> {
        let mut qb =
            QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM device d WHERE d.{} = ", kind.device_column()));
        qb.push_bind(group_id);
        scope.push_conditions(&mut qb, "d.network_id", "d.device_type_id");
        qb.push(" ORDER BY d.id");
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(device_from_row).collect())
    }

    pub async fn device_insert(&self, d: &Device) -> Result<()> {
        sqlx::query(
            "INSERT INTO device (device_id, name, network_id, device_type_id, data, blocked) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(d.network_id)
        .bind(d.device_type_id)
        .bind(json_text(&d.data))
        .bind(d.is_blocked)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn device_update(&self, d: &Device) -> Result<()> {
        sqlx::query(
            "UPDATE device SET name = ?, network_id = ?, device_type_id = ?, data = ?, blocked = ?, \
             entity_version = entity_version + 1 WHERE device_id = ?",
        )
        .bind(&d.name)
        .bind(d.network_id)
        .bind(d.device_type_id)
        .bind(json_text(&d.data))
        .bind(d.is_blocked)
        .bind(&d.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes a device and its messages. Messages go in bounded batches so a device with a long
    /// history does not hold the write lock for one long transaction.
    pub async fn device_delete(&self, device_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM device WHERE device_id = ?").bind(device_id).execute(&self.pool).await?;
        self.device_messages_delete(device_id).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a device's notifications and commands, a bounded batch per statement.
    pub(crate) async fn device_messages_delete(&self, device_id: &str) -> Result<()> {
        for table in ["device_notification", "device_command"] {
            loop {
                let n = sqlx::query(&format!(
                    "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE device_id = ? LIMIT 5000)"
                ))
                .bind(device_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
                if n == 0 {
                    break;
                }
            }
        }
        Ok(())
    }
}
