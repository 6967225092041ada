//! Devices (§9): listing, registration/update with the `$device-add` / `$device-update` server
//! notifications, deletion.

use serde_json::{json, Map, Value};

use super::fields::Fields;
use super::Hub;
use crate::auth::{Action, Principal};
use crate::error::{ApiError, Result};
use crate::model::Device;
use crate::model::GroupKind;
use crate::store::writer::WriteOp;
use crate::store::{DeviceListQuery, NewNotification};

pub const DEVICE_ADD: &str = "$device-add";
pub const DEVICE_UPDATE: &str = "$device-update";
pub const DEVICE_CONNECTED: &str = "$device-connected";
pub const DEVICE_DISCONNECTED: &str = "$device-disconnected";

/// Names only the hub may use; clients inserting them get 403 on every transport.
pub fn is_server_notification(name: &str) -> bool {
    [DEVICE_ADD, DEVICE_UPDATE, DEVICE_CONNECTED, DEVICE_DISCONNECTED].contains(&name)
}

/// Device ids: 1..48 of letters, digits and dashes.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 48 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Hub {
    fn device_query(&self, principal: &Principal, params: &Value) -> Result<DeviceListQuery> {
        let f = Fields::of(params)?;
        Ok(DeviceListQuery {
            name: f.text("name")?,
            name_pattern: f.text("namePattern")?,
            network_id: f.i64("networkId")?,
            network_name: f.text("networkName")?,
            sort_column: f.sort_field(&[("name", "d.name"), ("network", "n.name"), ("deviceType", "t.name")])?,
            descending: f.sort_descending(false)?,
            take: f.take(self.max_take())?,
            skip: f.skip()?,
            scope: self.device_scope(principal),
        })
    }

    pub async fn device_list(&self, principal: &Principal, params: &Value) -> Result<Vec<Device>> {
        principal.require(Action::GetDevice)?;
        let q = self.device_query(principal, params)?;
        if q.scope.is_nothing() {
            return Ok(vec![]);
        }
        self.store.device_list(&q).await
    }

    pub async fn device_count(&self, principal: &Principal, params: &Value) -> Result<i64> {
        principal.require(Action::GetDevice)?;
        let mut q = self.device_query(principal, params)?;
        if q.scope.is_nothing() {
            return Ok(0);
        }
        (q.take, q.skip) = (None, None);
        self.store.device_count(&q).await
    }

    pub async fn device_get(&self, principal: &Principal, id: &str) -> Result<Device> {
        self.authorize_device(principal, Action::GetDevice, id).await
    }

    pub async fn device_delete(&self, principal: &Principal, id: &str) -> Result<()> {
        self.authorize_device(principal, Action::RegisterDevice, id).await?;
        self.store.device_delete(id).await?;
        // §9.3: subscriptions pinned to the deleted device must not match a new device of that id.
        self.device_gone(id);
        Ok(())
    }

    /// Registers or updates a device (§9.1). Returns the device as stored.
    pub async fn device_save(&self, principal: &Principal, id: &str, body: &Value) -> Result<Device> {
        let user = principal.require(Action::RegisterDevice)?;
        if !valid_device_id(id) {
            return Err(ApiError::bad_request("Device Id can only contain letters, digits and dashes."));
        }
        if !body.is_object() {
            return Err(ApiError::invalid_params());
        }
        let f = Fields::of(body)?;
        let name = f.str("name")?;
        let data = f.object("data")?;
        let is_blocked = f.bool("isBlocked")?;
        let given_network = f.i64("networkId")?;
        let given_type = f.i64("deviceTypeId")?;
        if name.is_some_and(|n| n.trim().is_empty() || n.chars().count() > 128) {
            return Err(ApiError::invalid_params());
        }

        let assigned = self.store.user_network_ids(user.id).await?;
        let network_id = match given_network {
            Some(n) => {
                if self.store.group_get(GroupKind::Network, n).await?.is_none() {
                    return Err(ApiError::invalid_params());
                }
                if !user.is_admin() && !assigned.contains(&n) {
                    return Err(ApiError::forbidden("No access to network!"));
                }
                n
            }
            None => *assigned.first().ok_or_else(|| ApiError::forbidden("No access to network!"))?,
        };
        let device_type_id = match given_type {
            Some(t) => {
                if self.store.group_get(GroupKind::DeviceType, t).await?.is_none() {
                    return Err(ApiError::invalid_params());
                }
                t
            }
            None => self
                .store
                .group_lowest_id(GroupKind::DeviceType, &principal.device_types)
                .await?
                .ok_or_else(|| ApiError::forbidden("No access to device type!"))?,
        };

        match self.store.device_get(id).await? {
            None => {
                let name = name.ok_or_else(ApiError::invalid_params)?;
                let device = Device {
                    id: id.to_string(),
                    name: name.to_string(),
                    data,
                    network_id: Some(network_id),
                    device_type_id: Some(device_type_id),
                    is_blocked: is_blocked.unwrap_or(false),
                };
                self.store.device_insert(&device).await.map_err(|e| {
                    if e.code() == 409 {
                        ApiError::conflict("Posted data conflicts with internal state. Device already exists.")
                    } else {
                        e
                    }
                })?;
                let params = serde_json::to_value(&device).unwrap_or(Value::Null);
                self.server_notification(&device, DEVICE_ADD, params).await?;
                Ok(device)
            }
            Some(old) => {
                if !user.is_admin() && !old.network_id.is_some_and(|n| assigned.contains(&n)) {
                    return Err(ApiError::forbidden("No access to device"));
                }
                let new = Device {
                    id: old.id.clone(),
                    name: name.map(str::to_string).unwrap_or_else(|| old.name.clone()),
                    data,
                    network_id: given_network.or(old.network_id),
                    device_type_id: given_type.or(old.device_type_id),
                    is_blocked: is_blocked.unwrap_or(old.is_blocked),
                };
                self.store.device_update(&new).await?;
                self.server_notification(&new, DEVICE_UPDATE, changed_properties(&old, &new)).await?;
                Ok(new)
            }
        }
    }

    /// MQTT presence: when an MQTT session's client id is a device id, `$device-connected` /
    /// `$device-disconnected` are stored and routed like the other server notifications.
    pub async fn device_presence(&self, device_id: &str, connected: bool, parameters: Value) -> Result<()> {
        let Some(device) = self.store.device_get(device_id).await? else {
            return Ok(());
        };
        let name = if connected { DEVICE_CONNECTED } else { DEVICE_DISCONNECTED };
        self.server_notification(&device, name, parameters).await
    }

    /// Stores and routes `$device-add` / `$device-update` with the device's network and type, so
    /// network- and type-filtered subscribers receive them too.
    async fn server_notification(&self, device: &Device, name: &str, parameters: Value) -> Result<()> {
        self.writer
            .write(WriteOp::Notification(NewNotification {
                device_id: device.id.clone(),
                network_id: device.network_id,
                device_type_id: device.device_type_id,
                notification: name.to_string(),
                timestamp: None,
                parameters: Some(parameters),
            }))
            .await?;
        Ok(())
    }
}

/// The device properties an update changed (an empty object when none did).
fn changed_properties(old: &Device, new: &Device) -> Value {
    let mut m = Map::new();
    if old.name != new.name {
        m.insert("name".into(), json!(new.name));
    }
    if old.data != new.data {
        m.insert("data".into(), json!(new.data));
    }
    if old.network_id != new.network_id {
        m.insert("networkId".into(), json!(new.network_id));
    }
    if old.device_type_id != new.device_type_id {
        m.insert("deviceTypeId".into(), json!(new.device_type_id));
    }
    if old.is_blocked != new.is_blocked {
        m.insert("isBlocked".into(), json!(new.is_blocked));
    }
    Value::Object(m)
}
