//! Networks and device types (§8): the same operations on two kinds of device groups.

use serde_json::{json, Value};

use super::fields::Fields;
use super::Hub;
use crate::auth::{Action, IdSet, Principal};
use crate::error::{ApiError, Result};
use crate::model::GroupKind;
use crate::model::{Device, Network};
use crate::store::GroupListQuery;

/// Per-kind names, actions and messages.
struct Words {
    get: Action,
    manage: Action,
    exists: &'static str,
    has_devices: &'static str,
}

fn words(kind: GroupKind) -> Words {
    match kind {
        GroupKind::Network => Words {
            get: Action::GetNetwork,
            manage: Action::ManageNetwork,
            exists: "Network cannot be created. Network with such name already exists",
            has_devices: "network",
        },
        GroupKind::DeviceType => Words {
            get: Action::GetDeviceType,
            manage: Action::ManageDeviceType,
            exists: "Device type cannot be created. Device type with such name already exists",
            has_devices: "device type",
        },
    }
}

fn not_found(kind: GroupKind, id: i64) -> ApiError {
    match kind {
        GroupKind::Network => ApiError::network_not_found(id),
        GroupKind::DeviceType => ApiError::device_type_not_found(id),
    }
}

fn check_name_and_description(name: Option<&str>, description: Option<&str>) -> Result<()> {
    if let Some(n) = name {
        if n.trim().is_empty() || n.chars().count() > 128 {
            return Err(ApiError::invalid_params());
        }
    }
    if description.is_some_and(|d| d.chars().count() > 128) {
        return Err(ApiError::invalid_params());
    }
    Ok(())
}

impl Hub {
    /// The permission check with a group target (§5.3 rules 2–3).
    fn require_group(&self, kind: GroupKind, principal: &Principal, action: Action, id: i64) -> Result<()> {
        match kind {
            GroupKind::Network => principal.require_network(action, id).map(|_| ()),
            GroupKind::DeviceType => principal.require_device_type(action, id).map(|_| ()),
        }
    }

    /// The permission check with a group target, then its existence: 403 outside the principal's
    /// scope, 404 for a missing group (the dispatcher runs this before validating the request).
    /// A client-role user's scope is its token's *and* its live assignments.
    pub async fn group_target(
        &self,
        kind: GroupKind,
        principal: &Principal,
        action: Action,
        id: i64,
    ) -> Result<Network> {
        self.require_group(kind, principal, action, id)?;
        let visible = match kind {
            GroupKind::Network => self.visible_networks(principal).await?,
            GroupKind::DeviceType => self.visible_device_types(principal).await?,
        };
        if !visible.contains(Some(id)) {
            // Reading a group the user is not assigned to is "not found" (as in the reference);
            // managing one is refused. Either way existing and missing groups answer alike.
            return Err(if action == words(kind).get { not_found(kind, id) } else { ApiError::access_denied() });
        }
        self.store.group_get(kind, id).await?.ok_or_else(|| not_found(kind, id))
    }

    /// Restrictions of a group list for this principal; `None` = nothing visible.
    fn group_visibility(&self, kind: GroupKind, principal: &Principal) -> Option<(Option<i64>, IdSet)> {
        let user = principal.user.as_ref()?;
        let (ids, assigned) = match kind {
            GroupKind::Network => (principal.networks.clone(), !user.is_admin()),
            GroupKind::DeviceType => {
                (principal.device_types.clone(), !user.is_admin() && !user.all_device_types_available)
            }
        };
        if ids.is_empty() {
            return None;
        }
        Some((assigned.then_some(user.id), ids))
    }

    fn group_query(&self, kind: GroupKind, principal: &Principal, params: &Value) -> Result<Option<GroupListQuery>> {
        let f = Fields::of(params)?;
        let mut q = GroupListQuery {
            name: f.text("name")?,
            name_pattern: f.text("namePattern")?,
            sort_field: f.sort_field(&[("id", "id"), ("name", "name")])?,
            descending: f.sort_descending(false)?,
            take: f.take(self.max_take())?,
            skip: f.skip()?,
            ..Default::default()
        };
        let Some((assigned, ids)) = self.group_visibility(kind, principal) else {
            return Ok(None);
        };
        q.assigned_to_user = assigned;
        q.ids = Some(ids);
        Ok(Some(q))
    }

    pub async fn group_list(&self, kind: GroupKind, principal: &Principal, params: &Value) -> Result<Vec<Network>> {
        principal.require(words(kind).get)?;
        match self.group_query(kind, principal, params)? {
            None => Ok(vec![]),
            Some(q) => self.store.group_list(kind, &q).await,
        }
    }

    pub async fn group_count(&self, kind: GroupKind, principal: &Principal, params: &Value) -> Result<i64> {
        principal.require(words(kind).get)?;
        match self.group_query(kind, principal, params)? {
            None => Ok(0),
            Some(mut q) => {
                (q.take, q.skip) = (None, None);
                self.store.group_count(kind, &q).await
            }
        }
    }

    /// One group with its visible devices.
    pub async fn group_get(&self, kind: GroupKind, principal: &Principal, id: i64) -> Result<Value> {
        let group = self.group_target(kind, principal, words(kind).get, id).await?;
        let devices = self.store.devices_in_group(kind, id, &self.device_scope(principal)).await?;
        let devices: Vec<Value> = devices.iter().map(Device::nested_view).collect();
        Ok(json!({"id": group.id, "name": group.name, "description": group.description, "devices": devices}))
    }

    pub async fn group_insert(&self, kind: GroupKind, principal: &Principal, body: &Value) -> Result<i64> {
        principal.require(words(kind).manage)?;
        let f = Fields::of(body)?;
        let name = f.str("name")?.ok_or_else(ApiError::invalid_params)?;
        let description = f.str("description")?;
        check_name_and_description(Some(name), description)?;
        if self.store.group_by_name(kind, name).await?.is_some() {
            return Err(ApiError::forbidden(words(kind).exists));
        }
        self.store.group_insert(kind, name, description).await.map_err(|e| {
            if e.code() == 409 {
                ApiError::forbidden(words(kind).exists)
            } else {
                e
            }
        })
    }

    pub async fn group_update(&self, kind: GroupKind, principal: &Principal, id: i64, body: &Value) -> Result<()> {
        let mut group = self.group_target(kind, principal, words(kind).manage, id).await?;
        let f = Fields::of(body)?;
        // A partial update: a missing or null name keeps the old one, but an empty one is invalid.
        let name = match f.0.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) => Some(n.as_str()),
            Some(_) => return Err(ApiError::invalid_params()),
        };
        let description = f.str("description")?;
        check_name_and_description(name, description)?;
        if let Some(n) = name {
            if self.store.group_by_name(kind, n).await?.is_some_and(|g| g.id != id) {
                return Err(ApiError::forbidden(words(kind).exists));
            }
            group.name = n.to_string();
        }
        if f.has("description") {
            group.description = description.map(str::to_string);
        }
        self.store.group_update(kind, &group).await
    }

    pub async fn group_delete(&self, kind: GroupKind, principal: &Principal, id: i64, force: bool) -> Result<()> {
        self.group_target(kind, principal, words(kind).manage, id).await?;
        let devices = self.store.devices_in_group(kind, id, &crate::store::DeviceScope::everything()).await?;
        if !force && !devices.is_empty() {
            let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "There are the following devices within this {}: {}. Please review and delete them first.",
                words(kind).has_devices,
                ids.join(", ")
            )));
        }
        self.store.group_delete(kind, id).await?;
        self.assignments_changed();
        for d in &devices {
            self.device_gone(&d.id);
        }
        Ok(())
    }
}
