//! The hub's entities and their JSON views (CONTRACT.md §2). Views emit exactly the keys the contract
//! lists, nulls included; internal fields (password hash, login attempts, `isUpdated`) never leave.

use serde::Serialize;
use serde_json::{json, Value};

use crate::time::format_ms;

pub const ROLE_ADMIN: i64 = 0;
pub const ROLE_CLIENT: i64 = 1;
pub const STATUS_ACTIVE: i64 = 0;
pub const STATUS_LOCKED_OUT: i64 = 1;
pub const STATUS_DISABLED: i64 = 2;

fn ts_opt(ms: Option<i64>) -> Value {
    ms.map(|m| Value::String(format_ms(m))).unwrap_or(Value::Null)
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: i64,
    pub login: String,
    pub password_hash: String,
    pub password_salt: String,
    pub role: i64,
    pub status: i64,
    pub login_attempts: i64,
    /// When a lockout after wrong passwords lifts (`None`: not locked that way).
    pub locked_until: Option<i64>,
    pub last_login: Option<i64>,
    pub data: Option<Value>,
    pub intro_reviewed: bool,
    pub all_device_types_available: bool,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == ROLE_ADMIN
    }
    pub fn is_active(&self) -> bool {
        self.status == STATUS_ACTIVE
    }
    /// `GET /user` list view.
    pub fn list_view(&self) -> Value {
        json!({
            "id": self.id, "login": self.login, "role": self.role, "status": self.status,
            "lastLogin": ts_opt(self.last_login), "data": self.data,
            "introReviewed": self.intro_reviewed, "allDeviceTypesAvailable": self.all_device_types_available,
        })
    }
    /// `GET /user/{id}` view: list view plus the assigned networks.
    pub fn published_view(&self, networks: &[Network]) -> Value {
        let mut v = self.list_view();
        v["networks"] = json!(networks);
        v
    }
    /// `POST /user` response.
    pub fn insert_view(&self) -> Value {
        json!({
            "id": self.id, "lastLogin": ts_opt(self.last_login), "data": self.data,
            "introReviewed": self.intro_reviewed, "allDeviceTypesAvailable": self.all_device_types_available,
        })
    }
}

/// A network or a device type: both have the same shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Network {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
}

pub type DeviceType = Network;

/// The two kinds of device groups: networks and device types have the same shape and operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    Network,
    DeviceType,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub id: String,
    pub name: String,
    pub data: Option<Value>,
    pub network_id: Option<i64>,
    pub device_type_id: Option<i64>,
    pub is_blocked: bool,
}

impl Device {
    /// The view of a device embedded in a network or device type.
    pub fn nested_view(&self) -> Value {
        json!({"id": self.id, "name": self.name, "data": self.data, "isBlocked": self.is_blocked})
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: i64,
    pub notification: String,
    pub device_id: String,
    pub network_id: Option<i64>,
    pub device_type_id: Option<i64>,
    pub timestamp: i64,
    pub parameters: Option<Value>,
}

impl Serialize for Notification {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        json!({
            "id": self.id, "notification": self.notification, "deviceId": self.device_id,
            "networkId": self.network_id, "deviceTypeId": self.device_type_id,
            "timestamp": format_ms(self.timestamp), "parameters": self.parameters,
        })
        .serialize(s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: i64,
    pub command: String,
    pub timestamp: i64,
    pub last_updated: i64,
    pub user_id: Option<i64>,
    pub device_id: String,
    pub network_id: Option<i64>,
    pub device_type_id: Option<i64>,
    pub parameters: Option<Value>,
    pub lifetime: Option<i64>,
    pub status: Option<String>,
    pub result: Option<Value>,
    pub is_updated: bool,
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        json!({
            "id": self.id, "command": self.command, "timestamp": format_ms(self.timestamp),
            "lastUpdated": format_ms(self.last_updated), "userId": self.user_id,
            "deviceId": self.device_id, "networkId": self.network_id, "deviceTypeId": self.device_type_id,
            "parameters": self.parameters, "lifetime": self.lifetime, "status": self.status,
            "result": self.result,
        })
        .serialize(s)
    }
}

impl Command {
    /// `POST .../command` response.
    pub fn insert_view(&self) -> Value {
        json!({
            "id": self.id, "timestamp": format_ms(self.timestamp),
            "lastUpdated": format_ms(self.last_updated), "userId": self.user_id,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    pub name: String,
    pub value: String,
    pub entity_version: i64,
}

// MQTT sessions (stored by the hub, used by the broker edge).

/// A stored `dh/` subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
    pub since: i64,
}

/// A presence change of an MQTT session, recorded in batches off the connect path.
#[derive(Debug, Clone)]
pub enum SessionRecord {
    Connected { client_id: String, user_id: Option<i64>, clean: bool, at: i64 },
    Disconnected { client_id: String, at: i64, reason: &'static str },
}

/// The stored facts about a client id that decide who may connect with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub clean: bool,
    /// `Some(None)`: owned by anonymous; `None`: no owner recorded.
    pub owner: Option<Option<i64>>,
    /// When connected: the user it is connected as (`None`: anonymous) and the instance holding it.
    pub live: Option<(Option<i64>, Option<String>)>,
}
