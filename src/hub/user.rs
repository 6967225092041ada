//! Users and their network / device-type assignments (§7).

use serde_json::{json, Value};

use super::fields::Fields;
use super::Hub;
use crate::auth::{password, Action, Principal};
use crate::error::{ApiError, Result};
use crate::model::GroupKind;
use crate::model::{User, ROLE_ADMIN, ROLE_CLIENT, STATUS_ACTIVE, STATUS_DISABLED};
use crate::store::{UserListQuery, UserUpdate};

/// `^[\w@.-]+$` with Java's (ASCII) `\w`, 3..128 characters after trimming.
fn validate_login(raw: &str) -> Result<String> {
    let login = raw.trim().to_string();
    let len = login.chars().count();
    if !(3..=128).contains(&len) {
        return Err(ApiError::bad_request(
            "Field cannot be empty. The length of login should be from 3 to 128 symbols.",
        ));
    }
    if !login.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@' || c == '.' || c == '-') {
        return Err(ApiError::bad_request(
            "Login can contain only lowercase or uppercase letters, numbers, and some special symbols (_@.)",
        ));
    }
    Ok(login)
}

fn validate_password(p: &str) -> Result<(String, String)> {
    if !(6..=128).contains(&p.chars().count()) {
        return Err(ApiError::bad_request("Password can contain only from 6 to 128 symbols!"));
    }
    Ok(password::hash(p))
}

fn parse_role(f: &Fields) -> Result<Option<i64>> {
    match f.i64_or("role", || ApiError::bad_request("User role is invalid or empty"))? {
        Some(r) if r != ROLE_ADMIN && r != ROLE_CLIENT => Err(ApiError::bad_request("User role is invalid or empty")),
        r => Ok(r),
    }
}

fn parse_status(f: &Fields) -> Result<Option<i64>> {
    match f.i64("status")? {
        Some(s) if !(STATUS_ACTIVE..=STATUS_DISABLED).contains(&s) => Err(ApiError::invalid_params()),
        s => Ok(s),
    }
}

pub(crate) fn user_list_query(f: &Fields, max_take: i64) -> Result<UserListQuery> {
    Ok(UserListQuery {
        login: f.text("login")?,
        login_pattern: f.text("loginPattern")?,
        role: f.i64("role")?,
        status: f.i64("status")?,
        sort_field: f.sort_field(&[("id", "id"), ("login", "login")])?,
        descending: f.sort_descending(false)?,
        take: f.take(max_take)?,
        skip: f.skip()?,
        only_id: None,
    })
}

/// What a caller wants to do with a user named by id: decides what a client-role caller may reach.
#[derive(Debug, Clone, Copy)]
pub enum UserAccess<'a> {
    /// Read the user or its assignments: a client reads only its own.
    Read,
    /// Update with this body: a client may change only its own user, and never `login`, `role` or
    /// `status`.
    Update(Option<&'a Value>),
    /// Delete: a client may delete nobody but itself (which is refused later, as for admins).
    Delete,
    /// Grant or withdraw networks or device types: a client may do it for non-admin users, within
    /// what it holds itself (checked by the operation).
    Assign,
}

fn admin_required() -> ApiError {
    ApiError::forbidden("Admin permissions required for this action")
}

/// Whether an update body touches a field only administrators may change.
fn changes_admin_fields(body: &Value) -> bool {
    ["login", "role", "status"].iter().any(|k| body.get(k).is_some_and(|v| !v.is_null()))
}

impl Hub {
    /// Steps (2) and (4) of the permission order for a user named by id. The token action was
    /// checked by the caller; here the caller's *user role* decides, whatever actions its token
    /// carries: administrators reach every user (404 for a missing one), a client-role user reaches
    /// only itself — so it learns nothing about other users, not even whether they exist.
    pub async fn user_target(&self, principal: &Principal, id: i64, access: UserAccess<'_>) -> Result<User> {
        let me = principal.user.as_deref().ok_or_else(ApiError::unauthorized)?;
        if !me.is_admin() {
            match access {
                UserAccess::Update(Some(body)) if changes_admin_fields(body) => return Err(admin_required()),
                // The reference answers a client updating another user with 401.
                UserAccess::Update(_) if id != me.id => return Err(ApiError::unauthorized()),
                UserAccess::Read | UserAccess::Delete if id != me.id => return Err(ApiError::access_denied()),
                UserAccess::Assign => {
                    let target = self.user_or_404(id).await?;
                    if target.is_admin() {
                        return Err(admin_required());
                    }
                    return Ok(target);
                }
                _ => {}
            }
        }
        self.user_or_404(id).await
    }

    async fn user_or_404(&self, id: i64) -> Result<User> {
        self.store.user_get(id).await?.ok_or_else(|| ApiError::user_not_found(id))
    }

    pub async fn user_list(&self, principal: &Principal, params: &Value) -> Result<Vec<Value>> {
        let me = principal.require(Action::ManageUser)?;
        let mut q = user_list_query(&Fields::of(params)?, self.max_take())?;
        q.only_id = (!me.is_admin()).then_some(me.id);
        Ok(self.store.user_list(&q).await?.iter().map(User::list_view).collect())
    }

    pub async fn user_count(&self, principal: &Principal, params: &Value) -> Result<i64> {
        let me = principal.require(Action::ManageUser)?;
        let mut q = user_list_query(&Fields::of(params)?, self.max_take())?;
        q.only_id = (!me.is_admin()).then_some(me.id);
        (q.take, q.skip) = (None, None);
        self.store.user_count(&q).await
    }

    pub async fn user_get(&self, principal: &Principal, id: i64) -> Result<Value> {
        principal.require(Action::ManageUser)?;
        let user = self.user_target(principal, id, UserAccess::Read).await?;
        Ok(user.published_view(&self.store.user_networks(id).await?))
    }

    pub async fn user_current(&self, principal: &Principal) -> Result<Value> {
        let me = principal.require(Action::GetCurrentUser)?;
        let user = self.store.user_get(me.id).await?.ok_or_else(|| ApiError::conflict("Can not get current user."))?;
        Ok(user.published_view(&self.store.user_networks(user.id).await?))
    }

    pub async fn user_insert(&self, principal: &Principal, body: &Value) -> Result<User> {
        let me = principal.require(Action::ManageUser)?;
        let f = Fields::of(body)?;
        let login = validate_login(f.str("login")?.unwrap_or(""))?;
        let role = parse_role(&f)?.ok_or_else(|| ApiError::bad_request("User role is invalid or empty"))?;
        // Whatever its token carries, a client-role user never creates an administrator.
        if role == ROLE_ADMIN && !me.is_admin() {
            return Err(admin_required());
        }
        let status = parse_status(&f)?.unwrap_or(STATUS_ACTIVE);
        let (password_hash, password_salt) = validate_password(f.str("password")?.unwrap_or(""))?;
        let data = f.object("data")?;
        if self.store.user_by_login(&login).await?.is_some() {
            return Err(login_taken());
        }
        let user = User {
            id: 0,
            login,
            password_hash,
            password_salt,
            role,
            status,
            login_attempts: 0,
            locked_until: None,
            last_login: None,
            data,
            intro_reviewed: f.bool("introReviewed")?.unwrap_or(false),
            all_device_types_available: f.bool("allDeviceTypesAvailable")?.unwrap_or(true),
        };
        self.store.user_insert(&user).await.map_err(|e| if e.code() == 409 { login_taken() } else { e })
    }

    pub async fn user_update(&self, principal: &Principal, id: i64, body: &Value) -> Result<()> {
        let me = principal.require(Action::ManageUser)?;
        let target = self.user_target(principal, id, UserAccess::Update(Some(body))).await?;
        self.apply_user_update(me, &target, body).await
    }

    pub async fn user_update_current(&self, principal: &Principal, body: &Value) -> Result<()> {
        let me = principal.require(Action::UpdateCurrentUser)?;
        let f = Fields::of(body)?;
        if !me.is_admin() && (f.get("login").is_some() || f.get("role").is_some() || f.get("status").is_some()) {
            return Err(admin_required());
        }
        let target = self.user_or_404(me.id).await.map_err(|_| ApiError::unauthorized())?;
        self.apply_user_update(me, &target, body).await
    }

    /// Applies a (validated) update of `target` by `me`, then tells live sessions of `target` when its
    /// rights may have shrunk.
    async fn apply_user_update(&self, me: &User, target: &User, body: &Value) -> Result<()> {
        let id = target.id;
        let admin = me.is_admin();
        let f = Fields::of(body)?;
        let mut up = UserUpdate { data: f.object("data")?, ..Default::default() };
        if let Some(login) = f.str("login")? {
            let login = validate_login(login)?;
            if let Some(other) = self.store.user_by_login(&login).await? {
                if other.id != id {
                    return Err(login_taken());
                }
            }
            up.login = Some(login);
        }
        if let Some(p) = f.str("password")? {
            self.check_old_password(me, target, &f)?;
            up.password = Some(validate_password(p)?);
        }
        if admin {
            up.role = parse_role(&f)?;
            up.status = parse_status(&f)?;
        }
        up.intro_reviewed = f.bool("introReviewed")?;
        self.store.user_update(id, &up).await.map_err(|e| if e.code() == 409 { login_taken() } else { e })?;
        let demoted = up.role.is_some_and(|r| r != target.role && r != ROLE_ADMIN);
        let deactivated = up.status.is_some_and(|s| s != STATUS_ACTIVE);
        if up.password.is_some() || demoted || deactivated || up.login.is_some() {
            self.user_rights_changed(id);
        }
        Ok(())
    }

    /// A password change: `oldPassword`, when given, must match (403 otherwise); with
    /// `[auth] require_old_password` a client-role user changing its own password must give it.
    fn check_old_password(&self, me: &User, target: &User, f: &Fields) -> Result<()> {
        let old = match f.0.get("oldPassword") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(ApiError::invalid_params()),
        };
        match old {
            Some(old) if !password::verify(old, &target.password_hash, &target.password_salt) => {
                Err(ApiError::forbidden("The old password is incorrect"))
            }
            None if self.settings.auth.require_old_password && !me.is_admin() && me.id == target.id => {
                Err(ApiError::forbidden("The old password is required to change the password"))
            }
            _ => Ok(()),
        }
    }

    pub async fn user_delete(&self, principal: &Principal, id: i64) -> Result<()> {
        let me = principal.require(Action::ManageUser)?;
        if !me.is_admin() && me.id != id {
            return Err(ApiError::access_denied());
        }
        if me.id == id {
            return Err(ApiError::forbidden(
                "You can not delete a user or access key that you use to authenticate this request",
            ));
        }
        if !self.store.user_delete(id).await? {
            return Err(ApiError::user_not_found(id));
        }
        self.user_rights_changed(id);
        Ok(())
    }

    pub async fn user_get_network(&self, principal: &Principal, user_id: i64, network_id: i64) -> Result<Value> {
        principal.require(Action::GetNetwork)?;
        self.user_target(principal, user_id, UserAccess::Read).await?;
        let networks = self.store.user_networks(user_id).await?;
        let n = networks.into_iter().find(|n| n.id == network_id).ok_or_else(|| {
            ApiError::not_found(format!("Network with id {network_id} for user with id {user_id} was not found"))
        })?;
        Ok(json!({"network": n}))
    }

    pub async fn user_assign_network(
        &self,
        principal: &Principal,
        user_id: i64,
        network_id: i64,
        assign: bool,
    ) -> Result<()> {
        let me = principal.require(Action::ManageNetwork)?;
        self.user_target(principal, user_id, UserAccess::Assign).await?;
        // A client-role user grants or withdraws only networks it holds itself.
        if !me.is_admin() && !self.visible_networks(principal).await?.contains(Some(network_id)) {
            return Err(ApiError::access_denied());
        }
        self.store
            .group_get(GroupKind::Network, network_id)
            .await?
            .ok_or_else(|| ApiError::network_not_found(network_id))?;
        if assign {
            self.store.user_assign_network(user_id, network_id).await?;
            self.assignments_changed();
        } else {
            self.store.user_unassign_network(user_id, network_id).await?;
            self.user_rights_changed(user_id);
        }
        Ok(())
    }

    pub async fn user_device_types(&self, principal: &Principal, user_id: i64) -> Result<Value> {
        principal.require(Action::ManageDeviceType)?;
        let user = self.user_target(principal, user_id, UserAccess::Read).await?;
        let types = if user.all_device_types_available {
            self.store.group_list(GroupKind::DeviceType, &Default::default()).await?
        } else {
            self.store.user_device_types(user_id).await?
        };
        Ok(json!(types))
    }

    pub async fn user_get_device_type(&self, principal: &Principal, user_id: i64, type_id: i64) -> Result<Value> {
        principal.require(Action::GetDeviceType)?;
        let user = self.user_target(principal, user_id, UserAccess::Read).await?;
        let found = if user.all_device_types_available {
            self.store.group_get(GroupKind::DeviceType, type_id).await?
        } else {
            self.store.user_device_types(user_id).await?.into_iter().find(|t| t.id == type_id)
        };
        let t = found.ok_or_else(|| {
            ApiError::not_found(format!("Device type with id {type_id} for user with id {user_id} not found"))
        })?;
        Ok(json!({"deviceType": t}))
    }

    pub async fn user_assign_device_type(
        &self,
        principal: &Principal,
        user_id: i64,
        type_id: i64,
        assign: bool,
    ) -> Result<()> {
        let me = principal.require(Action::ManageDeviceType)?;
        let user = self.user_target(principal, user_id, UserAccess::Assign).await?;
        // A client-role user grants or withdraws only device types it holds itself.
        if !me.is_admin() && !self.visible_device_types(principal).await?.contains(Some(type_id)) {
            return Err(ApiError::access_denied());
        }
        self.store
            .group_get(GroupKind::DeviceType, type_id)
            .await?
            .ok_or_else(|| ApiError::device_type_not_found(type_id))?;
        if user.all_device_types_available {
            return Err(ApiError::forbidden("Cannot assign device type to user with all device types allowed"));
        }
        if assign {
            self.store.user_assign_device_type(user_id, type_id).await
        } else {
            self.store.user_unassign_device_type(user_id, type_id).await?;
            self.user_rights_changed(user_id);
            Ok(())
        }
    }

    pub async fn user_allow_all_device_types(&self, principal: &Principal, user_id: i64, all: bool) -> Result<()> {
        let me = principal.require(Action::ManageDeviceType)?;
        // "All device types" is more than any client holds.
        if !me.is_admin() {
            return Err(admin_required());
        }
        self.user_or_404(user_id).await?;
        self.store.user_set_all_device_types(user_id, all).await?;
        if !all {
            self.user_rights_changed(user_id);
        }
        Ok(())
    }
}

fn login_taken() -> ApiError {
    ApiError::forbidden("User with such login already exists. Please, select another one")
}
