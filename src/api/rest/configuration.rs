//! `/configuration/{name}`.

use std::sync::Arc;

use axum::extract::{Path, State};

use super::{no_content, ok, ApiResult};
use crate::api::extract::{Auth, Body};
use crate::hub::fields::Fields;
use crate::hub::Hub;

pub async fn get(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(name): Path<String>) -> ApiResult {
    ok(&hub.config_get(&p, &name).await?)
}

pub async fn put(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(name): Path<String>, Body(body): Body) -> ApiResult {
    // Permission first: a caller without rights learns nothing from body validation.
    hub.config_access(&p, &name)?;
    let value = Fields::of(&body)?.text("value")?;
    ok(&hub.config_put(&p, &name, value.as_deref()).await?)
}

pub async fn delete(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(name): Path<String>) -> ApiResult {
    hub.config_delete(&p, &name).await?;
    no_content()
}
