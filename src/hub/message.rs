//! Notifications and commands (§10.1–10.2): insert (through the group-commit writer), get, query and
//! command update.

use std::sync::Arc;

use serde_json::Value;

use super::device::is_server_notification;
use super::fields::Fields;
use super::Hub;
use crate::auth::{Action, Principal};
use crate::error::{ApiError, Result};
use crate::model::{Command, Device, Notification};
use crate::store::writer::{WriteOp, Written};
use crate::store::{CommandUpdate, MessageQuery, NewCommand, NewNotification};

fn name_field(value: Option<String>, missing: &str) -> Result<String> {
    match value {
        Some(n) if !n.trim().is_empty() && n.chars().count() <= 128 => Ok(n),
        Some(_) => Err(ApiError::invalid_params()),
        None => Err(ApiError::bad_request(missing)),
    }
}

impl Hub {
    fn require_network_of(device: &Device) -> Result<()> {
        if device.network_id.is_none() {
            return Err(ApiError::forbidden(format!(
                "Device with deviceId = {} is not connected to any network",
                device.id
            )));
        }
        Ok(())
    }

    fn message_query(
        &self,
        device_id: &str,
        params: &Value,
        name_key: &str,
        command: bool,
        default_take: i64,
    ) -> Result<MessageQuery> {
        let f = Fields::of(params)?;
        let mut names = f.list("names")?;
        if let Some(n) = f.text(name_key)? {
            names = Some(vec![n]);
        }
        let sort_fields: &[(&str, &'static str)] = if command {
            &[("timestamp", "timestamp"), ("command", "command"), ("status", "status")]
        } else {
            &[("timestamp", "timestamp"), ("notification", "notification")]
        };
        Ok(MessageQuery {
            device_id: device_id.to_string(),
            start: f.timestamp("start")?,
            end: f.timestamp("end")?,
            names,
            status: if command { f.text("status")? } else { None },
            updated_only: command && f.bool("returnUpdated")?.unwrap_or(false),
            sort_field: f.sort_field(sort_fields)?.unwrap_or("timestamp"),
            descending: f.sort_descending(true)?,
            take: f.take(self.max_take())?.unwrap_or(default_take),
            skip: f.skip()?.unwrap_or(0),
        })
    }

    pub async fn notification_insert(
        &self,
        principal: &Principal,
        device_id: &str,
        body: &Value,
    ) -> Result<Arc<Notification>> {
        let op = self.notification_op(principal, device_id, body).await?;
        match self.writer.write(op).await? {
            Written::Notification(n) => Ok(n),
            _ => Err(ApiError::internal()),
        }
    }

    /// `notification_insert` up to the write: the permission check, validation and the row to store.
    pub async fn notification_op(&self, principal: &Principal, device_id: &str, body: &Value) -> Result<WriteOp> {
        let device = self.authorize_device(principal, Action::CreateDeviceNotification, device_id).await?;
        let f = Fields::of(body)?;
        let name = name_field(f.text("notification")?, "Invalid request parameters")?;
        if is_server_notification(&name) {
            return Err(ApiError::forbidden(
                "It's forbidden to insert these special notifications: $device-update, $device-add.",
            ));
        }
        let timestamp = f.timestamp("timestamp")?;
        let parameters = f.object("parameters")?;
        Self::require_network_of(&device)?;
        Ok(WriteOp::Notification(NewNotification {
            device_id: device.id,
            network_id: device.network_id,
            device_type_id: device.device_type_id,
            notification: name,
            timestamp,
            parameters,
        }))
    }

    pub async fn notification_get(&self, principal: &Principal, device_id: &str, id: i64) -> Result<Notification> {
        self.authorize_device(principal, Action::GetDeviceNotification, device_id).await?;
        self.store
            .notification_get(device_id, id)
            .await?
            .ok_or_else(|| ApiError::not_found("Requested notification not found"))
    }

    pub async fn notification_query(
        &self,
        principal: &Principal,
        device_id: &str,
        params: &Value,
        default_take: i64,
    ) -> Result<Vec<Notification>> {
        self.authorize_device(principal, Action::GetDeviceNotification, device_id).await?;
        let q = self.message_query(device_id, params, "notification", false, default_take)?;
        self.store.notification_query(&q).await
    }

    pub async fn command_insert(&self, principal: &Principal, device_id: &str, body: &Value) -> Result<Arc<Command>> {
        let op = self.command_op(principal, device_id, body).await?;
        match self.writer.write(op).await? {
            Written::Command(c) => Ok(c),
            _ => Err(ApiError::internal()),
        }
    }

    /// `command_insert` up to the write: the permission check, validation and the row to store.
    pub async fn command_op(&self, principal: &Principal, device_id: &str, body: &Value) -> Result<WriteOp> {
        let device = self.authorize_device(principal, Action::CreateDeviceCommand, device_id).await?;
        let f = Fields::of(body)?;
        let name = name_field(f.text("command")?, "Command is required")?;
        let lifetime = f.i64("lifetime")?;
        let status = f.text("status")?;
        if status.as_ref().is_some_and(|s| s.chars().count() > 128) {
            return Err(ApiError::invalid_params());
        }
        Ok(WriteOp::Command(NewCommand {
            device_id: device.id,
            network_id: device.network_id,
            device_type_id: device.device_type_id,
            command: name,
            timestamp: f.timestamp("timestamp")?,
            user_id: principal.user_id(),
            parameters: f.object("parameters")?,
            lifetime,
            status,
            result: f.object("result")?,
        }))
    }

    pub async fn command_get(
        &self,
        principal: &Principal,
        device_id: &str,
        id: i64,
        updated_only: bool,
    ) -> Result<Command> {
        self.authorize_device(principal, Action::GetDeviceCommand, device_id).await?;
        match self.store.command_get(device_id, id).await? {
            Some(c) if !updated_only || c.is_updated => Ok(c),
            _ => Err(ApiError::command_not_found(id)),
        }
    }

    pub async fn command_query(
        &self,
        principal: &Principal,
        device_id: &str,
        params: &Value,
        default_take: i64,
    ) -> Result<Vec<Command>> {
        self.authorize_device(principal, Action::GetDeviceCommand, device_id).await?;
        let q = self.message_query(device_id, params, "command", true, default_take)?;
        self.store.command_query(&q).await
    }

    /// A device's answer: sets `status` / `result` (absent ones unchanged), marks it updated, and
    /// wakes `wait` callers and update subscribers once committed.
    pub async fn command_update(
        &self,
        principal: &Principal,
        device_id: &str,
        id: i64,
        body: &Value,
    ) -> Result<Arc<Command>> {
        let op = self.command_update_op(principal, device_id, id, body).await?;
        match self.writer.write(op).await? {
            Written::CommandUpdated(c) => Ok(c),
            _ => Err(ApiError::internal()),
        }
    }

    /// `command_update` up to the write: the permission check, validation and the change to store.
    pub async fn command_update_op(
        &self,
        principal: &Principal,
        device_id: &str,
        id: i64,
        body: &Value,
    ) -> Result<WriteOp> {
        self.authorize_device(principal, Action::UpdateDeviceCommand, device_id).await?;
        let f = Fields::of(body)?;
        let status = f.text("status")?;
        if status.as_ref().is_some_and(|s| s.chars().count() > 128) {
            return Err(ApiError::invalid_params());
        }
        let result = f.object("result")?;
        Ok(WriteOp::CommandUpdate(CommandUpdate { device_id: device_id.to_string(), command_id: id, status, result }))
    }
}
