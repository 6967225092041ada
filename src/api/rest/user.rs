//! `/user...`: users, the current user, network and device-type assignments.

use std::sync::Arc;

use axum::extract::{OriginalUri, Path, State};
use axum::http::Method;
use serde_json::json;

use super::{base_of, created, no_content, ok, ApiResult, Route};
use crate::api::extract::{path_id, Auth, Body, Params};
use crate::hub::Hub;

pub fn routes() -> Vec<Route> {
    use Method as M;
    vec![
        Route::new(M::GET, "/user", list),
        Route::new(M::POST, "/user", insert),
        Route::new(M::GET, "/user/count", count),
        Route::new(M::GET, "/user/current", current),
        Route::new(M::PUT, "/user/current", update_current),
        Route::new(M::GET, "/user/{id}", get_one),
        Route::new(M::PUT, "/user/{id}", update),
        Route::new(M::DELETE, "/user/{id}", delete),
        Route::new(M::GET, "/user/{id}/network/{networkId}", get_network),
        Route::new(M::PUT, "/user/{id}/network/{networkId}", assign_network),
        Route::new(M::DELETE, "/user/{id}/network/{networkId}", unassign_network),
        Route::new(M::GET, "/user/{id}/devicetype", device_types),
        Route::new(M::PUT, "/user/{id}/devicetype/all", allow_all),
        Route::new(M::DELETE, "/user/{id}/devicetype/all", disallow_all),
        Route::new(M::GET, "/user/{id}/devicetype/{deviceTypeId}", get_device_type),
        Route::new(M::PUT, "/user/{id}/devicetype/{deviceTypeId}", assign_device_type),
        Route::new(M::DELETE, "/user/{id}/devicetype/{deviceTypeId}", unassign_device_type),
    ]
}

async fn list(State(hub): State<Arc<Hub>>, Auth(p): Auth, Params(q): Params) -> ApiResult {
    ok(&hub.user_list(&p, &q).await?)
}

async fn count(State(hub): State<Arc<Hub>>, Auth(p): Auth, Params(q): Params) -> ApiResult {
    ok(&json!({"count": hub.user_count(&p, &q).await?}))
}

async fn current(State(hub): State<Arc<Hub>>, Auth(p): Auth) -> ApiResult {
    ok(&hub.user_current(&p).await?)
}

async fn update_current(State(hub): State<Arc<Hub>>, Auth(p): Auth, Body(b): Body) -> ApiResult {
    hub.user_update_current(&p, &b).await?;
    no_content()
}

async fn get_one(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult {
    ok(&hub.user_get(&p, path_id(&id)?).await?)
}

async fn insert(State(hub): State<Arc<Hub>>, Auth(p): Auth, OriginalUri(uri): OriginalUri, Body(b): Body) -> ApiResult {
    let user = hub.user_insert(&p, &b).await?;
    created(&format!("{}/user/{}", base_of(&uri, "/user"), user.id), &user.insert_view())
}

async fn update(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(id): Path<String>, Body(b): Body) -> ApiResult {
    hub.user_update(&p, path_id(&id)?, &b).await?;
    no_content()
}

async fn delete(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult {
    hub.user_delete(&p, path_id(&id)?).await?;
    no_content()
}

async fn get_network(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path((id, nid)): Path<(String, String)>) -> ApiResult {
    ok(&hub.user_get_network(&p, path_id(&id)?, path_id(&nid)?).await?)
}

async fn assign_network(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path((id, nid)): Path<(String, String)>,
) -> ApiResult {
    hub.user_assign_network(&p, path_id(&id)?, path_id(&nid)?, true).await?;
    no_content()
}

async fn unassign_network(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path((id, nid)): Path<(String, String)>,
) -> ApiResult {
    hub.user_assign_network(&p, path_id(&id)?, path_id(&nid)?, false).await?;
    no_content()
}

async fn device_types(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult {
    ok(&hub.user_device_types(&p, path_id(&id)?).await?)
}

async fn allow_all(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult {
    hub.user_allow_all_device_types(&p, path_id(&id)?, true).await?;
    no_content()
}

async fn disallow_all(State(hub): State<Arc<Hub>>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult {
    hub.user_allow_all_device_types(&p, path_id(&id)?, false).await?;
    no_content()
}

async fn get_device_type(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path((id, tid)): Path<(String, String)>,
) -> ApiResult {
    ok(&hub.user_get_device_type(&p, path_id(&id)?, path_id(&tid)?).await?)
}

async fn assign_device_type(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path((id, tid)): Path<(String, String)>,
) -> ApiResult {
    hub.user_assign_device_type(&p, path_id(&id)?, path_id(&tid)?, true).await?;
    no_content()
}

async fn unassign_device_type(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path((id, tid)): Path<(String, String)>,
) -> ApiResult {
    hub.user_assign_device_type(&p, path_id(&id)?, path_id(&tid)?, false).await?;
    no_content()
}
