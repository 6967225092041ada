//! `/device`, `/device/count`, `/device/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::{no_content, ok, ApiResult};
use crate::api::extract::{Auth, Body, Params};
use crate::hub::Hub;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/device", get(list))
        .route("/device/count", get(count))
        .route("/device/{id}", get(get_one).put(save).delete(delete))
}

async fn list(State(hub): State<Arc<Hub>>, Auth(p): Auth, Params(q): Params) -> ApiResult {
    ok(&hub.device_list(&p, &q).await?)
}

async fn count(State(hub): State<Arc<Hub>>, Auth(p): Auth, Params(q): Params) -> ApiResult {
    ok(&json!({"count": hub.device_count(&p, &q).await?}))
}

async fn get_one(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult {
    ok(&hub.device_get(&p, &id).await?)
}

async fn save(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(id): Path<String>, Body(b): Body) -> ApiResult {
    hub.device_save(&p, &id, &b).await?;
    no_content()
}

async fn delete(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult {
    hub.device_delete(&p, &id).await?;
    no_content()
}
