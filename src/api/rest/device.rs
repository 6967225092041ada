//! `/device`, `/device/count`, `/device/{deviceId}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::Method;
use serde_json::json;

use super::{no_content, ok, ApiResult, Route};
use crate::api::extract::{Auth, Body, Params};
use crate::hub::Hub;

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/device", list),
        Route::new(Method::GET, "/device/count", count),
        Route::new(Method::GET, "/device/{deviceId}", get_one),
        Route::new(Method::PUT, "/device/{deviceId}", save),
        Route::new(Method::DELETE, "/device/{deviceId}", delete),
    ]
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
