//! Notifications and commands of a device, their long polls (`poll`, `pollMany`) and command `wait`.

use std::sync::Arc;

use axum::extract::{OriginalUri, Path, State};
use axum::http::{Method, StatusCode};

use super::{base_of, created, no_content, ok, raw_json, ApiResult, Route};
use crate::api::extract::{path_id, Auth, Body, Params};
use crate::error::ApiError;
use crate::hub::bus::EventKind;
use crate::hub::fields::Fields;
use crate::hub::Hub;

const REST_TAKE: i64 = 100;

/// (`DELETE` of a command is not a route: the router's 405 answers it, as in the reference.)
pub fn routes() -> Vec<Route> {
    use Method as M;
    vec![
        Route::new(M::GET, "/device/notification/poll", poll_many_notifications),
        Route::new(M::GET, "/device/command/poll", poll_many_commands),
        Route::new(M::GET, "/device/{deviceId}/notification", query_notifications),
        Route::new(M::POST, "/device/{deviceId}/notification", insert_notification),
        Route::new(M::GET, "/device/{deviceId}/notification/poll", poll_notifications),
        Route::new(M::GET, "/device/{deviceId}/notification/{id}", get_notification),
        Route::new(M::GET, "/device/{deviceId}/command", query_commands),
        Route::new(M::POST, "/device/{deviceId}/command", insert_command),
        Route::new(M::GET, "/device/{deviceId}/command/poll", poll_commands),
        Route::new(M::GET, "/device/{deviceId}/command/{commandId}", get_command),
        Route::new(M::PUT, "/device/{deviceId}/command/{commandId}", update_command),
        Route::new(M::GET, "/device/{deviceId}/command/{commandId}/poll", wait_command),
    ]
}

async fn query_notifications(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Params(q): Params,
) -> ApiResult {
    ok(&hub.notification_query(&p, &id, &q, REST_TAKE).await?)
}

async fn insert_notification(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    Body(b): Body,
) -> ApiResult {
    let n = hub.notification_insert(&p, &id, &b).await?;
    crate::metrics::received(crate::hub::bus::EventKind::Notification, crate::metrics::Transport::Rest);
    let body = serde_json::json!({"id": n.id, "timestamp": crate::time::format_ms(n.timestamp)});
    created(&format!("{}/device/{id}/notification/{}", base_of(&uri, "/device/"), n.id), &body)
}

async fn get_notification(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path((id, nid)): Path<(String, String)>,
) -> ApiResult {
    let nid = nid.parse().map_err(|_| ApiError::not_found("Requested notification not found"))?;
    ok(&hub.notification_get(&p, &id, nid).await?)
}

async fn poll_notifications(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Params(q): Params,
) -> ApiResult {
    hub.authorize_device(&p, crate::auth::Action::GetDeviceNotification, &id).await?;
    let req = hub.poll_request(EventKind::Notification, Some(&id), &q)?;
    Ok(raw_json(StatusCode::OK, hub.poll(&p, req).await?))
}

async fn poll_many_notifications(State(hub): State<Arc<Hub>>, Auth(p): Auth, Params(q): Params) -> ApiResult {
    let req = hub.poll_request(EventKind::Notification, None, &q)?;
    Ok(raw_json(StatusCode::OK, hub.poll(&p, req).await?))
}

async fn query_commands(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Params(q): Params,
) -> ApiResult {
    ok(&hub.command_query(&p, &id, &q, REST_TAKE).await?)
}

async fn insert_command(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    Body(b): Body,
) -> ApiResult {
    let c = hub.command_insert(&p, &id, &b).await?;
    crate::metrics::received(crate::hub::bus::EventKind::CommandInsert, crate::metrics::Transport::Rest);
    created(&format!("{}/device/{id}/command/{}", base_of(&uri, "/device/"), c.id), &c.insert_view())
}

async fn get_command(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path((id, cid)): Path<(String, String)>,
    Params(q): Params,
) -> ApiResult {
    let cid = path_id(&cid)?;
    let updated_only = Fields::of(&q)?.bool("returnUpdatedCommands")?.unwrap_or(false);
    ok(&hub.command_get(&p, &id, cid, updated_only).await?)
}

async fn update_command(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path((id, cid)): Path<(String, String)>,
    Body(b): Body,
) -> ApiResult {
    hub.command_update(&p, &id, path_id(&cid)?, &b).await?;
    crate::metrics::received(crate::hub::bus::EventKind::CommandUpdate, crate::metrics::Transport::Rest);
    no_content()
}

async fn poll_commands(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Params(q): Params,
) -> ApiResult {
    hub.authorize_device(&p, crate::auth::Action::GetDeviceCommand, &id).await?;
    let req = hub.poll_request(EventKind::CommandInsert, Some(&id), &q)?;
    Ok(raw_json(StatusCode::OK, hub.poll(&p, req).await?))
}

async fn poll_many_commands(State(hub): State<Arc<Hub>>, Auth(p): Auth, Params(mut q): Params) -> ApiResult {
    // pollMany does not support returnUpdatedCommands.
    if let Some(m) = q.as_object_mut() {
        m.remove("returnUpdatedCommands");
    }
    let req = hub.poll_request(EventKind::CommandInsert, None, &q)?;
    Ok(raw_json(StatusCode::OK, hub.poll(&p, req).await?))
}

async fn wait_command(
    State(hub): State<Arc<Hub>>,
    Auth(p): Auth,
    Path((id, cid)): Path<(String, String)>,
    Params(q): Params,
) -> ApiResult {
    let cid = path_id(&cid)?;
    let wait = hub.wait_timeout(&Fields::of(&q)?)?;
    match hub.command_wait(&p, &id, cid, wait).await? {
        Some(c) => ok(&c),
        None => no_content(),
    }
}
