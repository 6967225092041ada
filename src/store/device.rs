//! Devices.

use super::memo::Changes;
use super::scope::DeviceScope;
use super::user::push_paging;
use super::{json_column, json_text, Row, Sql, Store};
use crate::error::Result;
use crate::model::Device;
use crate::model::GroupKind;

const COLUMNS: &str = "d.device_id, d.name, d.data, d.network_id, d.device_type_id, d.blocked";

fn device_from_row(r: &Row) -> Device {
    Device {
        id: r.text("device_id"),
        name: r.text("name"),
        data: json_column(r.opt_text("data")),
        network_id: r.opt_i64("network_id"),
        device_type_id: r.opt_i64("device_type_id"),
        is_blocked: r.bool("blocked"),
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
    fn push_where(&self, qb: &mut Sql) {
        qb.push(" WHERE 1=1");
        if let Some(p) = &self.name_pattern {
            qb.push(" AND d.name LIKE ").push_bind(p);
        } else if let Some(n) = &self.name {
            qb.push(" AND d.name = ").push_bind(n);
        }
        if let Some(id) = self.network_id {
            qb.push(" AND d.network_id = ").push_bind(id);
        }
        if let Some(n) = &self.network_name {
            qb.push(" AND n.name = ").push_bind(n);
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
        // The statement is built only when the memo does not have the row.
        self.device_memo(device_id, || {
            let sql = Sql::new(format!("SELECT {COLUMNS} FROM device d WHERE d.device_id = $1")).bind(device_id);
            self.db.fetch_optional(sql, device_from_row)
        })
        .await
    }

    pub async fn device_list(&self, q: &DeviceListQuery) -> Result<Vec<Device>> {
        let mut qb = Sql::new(format!("SELECT {COLUMNS}{FROM}"));
        q.push_where(&mut qb);
        qb.push(&format!(
            " ORDER BY {} {}, d.id",
            q.sort_column.unwrap_or("d.id"),
            if q.descending { "DESC" } else { "ASC" }
        ));
        push_paging(&mut qb, q.take, q.skip);
        self.db.fetch_all(qb, device_from_row).await
    }

    pub async fn device_count(&self, q: &DeviceListQuery) -> Result<i64> {
        let mut qb = Sql::new(format!("SELECT COUNT(*){FROM}"));
        q.push_where(&mut qb);
        self.db.fetch_one(qb, |r| r.i64(0)).await
    }

    /// Devices in a network or of a device type, within a scope.
    pub async fn devices_in_group(&self, kind: GroupKind, group_id: i64, scope: &DeviceScope) -> Result<Vec<Device>> {
        let mut qb = Sql::new(format!("SELECT {COLUMNS} FROM device d WHERE d.{} = ", kind.device_column()));
        qb.push_bind(group_id);
        scope.push_conditions(&mut qb, "d.network_id", "d.device_type_id");
        qb.push(" ORDER BY d.id");
        self.db.fetch_all(qb, device_from_row).await
    }

    pub async fn device_insert(&self, d: &Device) -> Result<()> {
        let sql = Sql::new(
            "INSERT INTO device (device_id, name, network_id, device_type_id, data, blocked) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(d.network_id)
        .bind(d.device_type_id)
        .bind(json_text(&d.data))
        .bind(d.is_blocked);
        let db = self.db.clone();
        self.changing(Changes::Devices, async move { db.execute(sql).await }).await?;
        Ok(())
    }

    pub async fn device_update(&self, d: &Device) -> Result<()> {
        let sql = Sql::new(
            "UPDATE device SET name = $1, network_id = $2, device_type_id = $3, data = $4, blocked = $5, \
             entity_version = entity_version + 1 WHERE device_id = $6",
        )
        .bind(&d.name)
        .bind(d.network_id)
        .bind(d.device_type_id)
        .bind(json_text(&d.data))
        .bind(d.is_blocked)
        .bind(&d.id);
        let db = self.db.clone();
        self.changing(Changes::Devices, async move { db.execute(sql).await }).await?;
        Ok(())
    }

    /// Deletes a device and its messages. Messages go in bounded batches so a device with a long
    /// history does not hold the write lock for one long transaction.
    pub async fn device_delete(&self, device_id: &str) -> Result<bool> {
        let (db, sql) = (self.db.clone(), Sql::new("DELETE FROM device WHERE device_id = $1").bind(device_id));
        let done = self.changing(Changes::Devices, async move { db.execute(sql).await }).await?;
        self.device_messages_delete(device_id).await?;
        Ok(done > 0)
    }

    /// Deletes a device's notifications and commands, a bounded batch per statement.
    pub(crate) async fn device_messages_delete(&self, device_id: &str) -> Result<()> {
        for table in ["device_notification", "device_command"] {
            loop {
                let sql = Sql::new(format!(
                    "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE device_id = $1 LIMIT 5000)"
                ))
                .bind(device_id);
                let n = self.db.execute(sql).await?;
                if n == 0 {
                    break;
                }
            }
        }
        Ok(())
    }
}
