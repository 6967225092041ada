//! Configuration entries (admin only, §6.3).

use super::Hub;
use crate::auth::{Action, Principal};
use crate::error::{ApiError, Result};
use crate::model::Configuration;

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 32 {
        return Err(ApiError::bad_request(
            "Name cannot be empty. The name's length should not be more than 32 symbols.",
        ));
    }
    Ok(())
}

/// Entries the configuration API never shows or changes: rotating the JWT secret is an operator's
/// job (`HIVEHUB__AUTH__JWT_SECRET`), and whoever reads it can mint any token. The admin commands'
/// change signal (SQLite) is the hub's own.
const OPERATOR_ONLY: [&str; 2] = ["jwt.secret", crate::cluster::outside::CHANGE_ROW];

/// The configuration is the administrators' (§6.3): the token action is not enough, the caller's user
/// must be an administrator too, and operator-only entries are out of reach for everybody.
fn require_config_access(principal: &Principal, name: &str) -> Result<()> {
    let user = principal.require(Action::ManageConfiguration)?;
    if !user.is_admin() {
        return Err(ApiError::forbidden("Admin permissions required for this action"));
    }
    if OPERATOR_ONLY.contains(&name.trim()) {
        return Err(ApiError::forbidden(format!("Configuration entry {name} is managed by the operator, not the API")));
    }
    Ok(())
}

impl Hub {
    /// The permission part of every configuration operation (for transports that check it before
    /// reading a body).
    pub fn config_access(&self, principal: &Principal, name: &str) -> Result<()> {
        require_config_access(principal, name)
    }

    pub async fn config_get(&self, principal: &Principal, name: &str) -> Result<Configuration> {
        require_config_access(principal, name)?;
        self.store.config_get(name).await?.ok_or_else(|| {
            ApiError::not_found(format!("Requested config with name = {name} not found in the database")).without_body()
        })
    }

    pub async fn config_put(&self, principal: &Principal, name: &str, value: Option<&str>) -> Result<Configuration> {
        require_config_access(principal, name)?;
        check_name(name)?;
        let value = value.unwrap_or("");
        if value.is_empty() || value.chars().count() > 128 {
            return Err(ApiError::bad_request(
                "Value cannot be empty. The value's length should not be more than 128 symbols.",
            ));
        }
        self.store.config_put(name, value).await
    }

    pub async fn config_delete(&self, principal: &Principal, name: &str) -> Result<()> {
        require_config_access(principal, name)?;
        if !self.store.config_delete(name).await? {
            return Err(ApiError::not_found(format!("Requested config with name = {name} not found in the database")));
        }
        Ok(())
    }
}
