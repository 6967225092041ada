//! Visibility scopes and message filters, rendered into SQL conditions. The same `MessageFilter` is
//! matched in memory by the bus (`hub::bus`), so history queries and live delivery agree exactly.

use super::Sql;
use crate::auth::IdSet;

/// Which devices a principal may see (CONTRACT.md §5.4).
#[derive(Debug, Clone)]
pub struct DeviceScope {
    /// For non-admin users: only devices in networks assigned to this user (live join).
    pub assigned_to_user: Option<i64>,
    pub networks: IdSet,
    pub device_types: IdSet,
}

impl DeviceScope {
    pub fn everything() -> Self {
        DeviceScope { assigned_to_user: None, networks: IdSet::All, device_types: IdSet::All }
    }
    /// True when nothing can be visible (a list answers `[]` without asking the database).
    pub fn is_nothing(&self) -> bool {
        self.networks.is_empty() || self.device_types.is_empty()
    }
    pub(crate) fn push_conditions(&self, qb: &mut Sql, net_col: &str, type_col: &str) {
        if let Some(user) = self.assigned_to_user {
            qb.push(&format!(" AND {net_col} IN (SELECT network_id FROM user_network WHERE user_id = "));
            qb.push_bind(user);
            qb.push(")");
        }
        push_id_set(qb, net_col, &self.networks);
        push_id_set(qb, type_col, &self.device_types);
    }
}

pub(crate) fn push_id_set(qb: &mut Sql, col: &str, set: &IdSet) {
    if let IdSet::Only(ids) = set {
        if ids.is_empty() {
            qb.push(" AND FALSE");
            return;
        }
        qb.push(&format!(" AND {col} IN ")).push_list(ids.iter().copied());
    }
}

/// Which messages a poll or subscription wants (CONTRACT.md §11.2).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageFilter {
    /// Only these devices; `None` = any device the network / type scope allows.
    pub devices: Option<Vec<String>>,
    pub networks: IdSet,
    pub device_types: IdSet,
    /// Exact message names; `None` = any.
    pub names: Option<Vec<String>>,
}

impl MessageFilter {
    /// In-memory twin of `push_conditions`.
    pub fn matches(&self, device_id: &str, network_id: Option<i64>, device_type_id: Option<i64>, name: &str) -> bool {
        if let Some(devices) = &self.devices {
            if !devices.iter().any(|d| d == device_id) {
                return false;
            }
        }
        if let Some(names) = &self.names {
            if !names.iter().any(|n| n == name) {
                return false;
            }
        }
        self.networks.contains(network_id) && self.device_types.contains(device_type_id)
    }

    pub(crate) fn push_conditions(&self, qb: &mut Sql, name_col: &str) {
        if let Some(devices) = &self.devices {
            if devices.is_empty() {
                qb.push(" AND FALSE");
            } else {
                qb.push(" AND device_id IN ").push_list(devices);
            }
        }
        push_id_set(qb, "network_id", &self.networks);
        push_id_set(qb, "device_type_id", &self.device_types);
        if let Some(names) = &self.names {
            if names.is_empty() {
                qb.push(" AND FALSE");
            } else {
                qb.push(&format!(" AND {name_col} IN ")).push_list(names);
            }
        }
    }
}
