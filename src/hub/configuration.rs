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

impl Hub {
    pub async fn config_get(&self, principal: &Principal, name: &str) -> Result<Configuration> {
        principal.require(Action::ManageConfiguration)?;
        self.store.config_get(name).await?.ok_or_else(|| {
            ApiError::not_found(format!("Requested config with name = {name} not found in the database")).without_body()
        })
    }

    pub async fn config_put(&self, principal: &Principal, name: &str, value: Option<&str>) -> Result<Configuration> {
        principal.require(Action::ManageConfiguration)?;
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
        principal.require(Action::ManageConfiguration)?;
        if !self.store.config_delete(name).await? {
            return Err(ApiError::not_found(format!("Requested config with name = {name} not found in the database")));
        }
        Ok(())
    }
}
