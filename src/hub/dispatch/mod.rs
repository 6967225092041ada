//! The action table shared by the WebSocket API and MQTT `dh/request`: an action name plus a JSON
//! request maps to a service-layer call and a JSON payload, independent of the socket (§12.3).
//! Transports add the envelope (`action`, `requestId`, `status`) with `envelope`.

use serde_json::{json, Map, Value};

mod session;

use crate::error::{ApiError, Result};
use crate::hub::bus::EventKind;
use crate::hub::fields::Fields;
use crate::model::User;
use crate::store::GroupKind;
use crate::time::{format_ms, now_ms};
pub use session::{push_text, Session};

/// Page size of WebSocket lists when the request gives no `take`.
const WS_DEFAULT_TAKE: i64 = 20;

/// Actions an unauthenticated session may call.
const ANONYMOUS: [&str; 6] =
    ["server/info", "server/cacheInfo", "cluster/info", "authenticate", "token", "token/refresh"];

/// Success or error envelope around a payload.
pub fn envelope(action: Option<&Value>, request_id: Option<&Value>, result: Result<Map<String, Value>>) -> Value {
    let mut out = Map::new();
    if let Some(a) = action {
        out.insert("action".into(), a.clone());
    }
    out.insert("requestId".into(), request_id.cloned().unwrap_or(Value::Null));
    match result {
        Ok(payload) => {
            out.insert("status".into(), json!("success"));
            out.extend(payload);
        }
        Err(e) => {
            out.insert("status".into(), json!("error"));
            out.insert("code".into(), json!(e.code()));
            out.insert("error".into(), json!(e.message));
        }
    }
    Value::Object(out)
}

/// Decodes one request object and runs it; returns the response envelope.
pub async fn handle(session: &mut Session, request: &Value) -> Value {
    let Some(obj) = request.as_object() else {
        return json!({"status": "error", "code": 400, "error": "Malformed Json received."});
    };
    let request_id = obj.get("requestId");
    let action = obj.get("action");
    let result = match action.and_then(Value::as_str) {
        Some(name) => dispatch(session, name, request).await,
        None => Err(ApiError::bad_request("'action' field could not be parsed to known endpoint")),
    };
    envelope(action, request_id, result)
}

fn one(key: &str, value: impl serde::Serialize) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    m.insert(key.into(), serde_json::to_value(value).map_err(|_| ApiError::internal())?);
    Ok(m)
}

fn empty() -> Result<Map<String, Value>> {
    Ok(Map::new())
}

/// A required string id field.
fn required_text(f: &Fields, key: &str, message: &str) -> Result<String> {
    f.text(key)?.filter(|s| !s.is_empty()).ok_or_else(|| ApiError::bad_request(message))
}

/// A required integer id field (number or digit string).
fn required_id(f: &Fields, key: &str, message: &str) -> Result<i64> {
    f.i64_or(key, || ApiError::bad_request(message))?.ok_or_else(|| ApiError::bad_request(message))
}

/// A required nested object; `null`/absent → `message`.
fn required_object<'a>(f: &Fields<'a>, key: &str, message: &str) -> Result<&'a Value> {
    f.nested(key).ok_or_else(|| ApiError::bad_request(message))
}

/// A list request with the WebSocket default page size.
fn with_default_take(req: &Value) -> Value {
    let mut r = req.clone();
    if let Some(m) = r.as_object_mut() {
        if m.get("take").is_none_or(Value::is_null) {
            m.insert("take".into(), json!(WS_DEFAULT_TAKE));
        }
    }
    r
}

fn group_words(action: &str) -> Option<(GroupKind, &'static str, &'static str, &'static str, &'static str)> {
    if action.starts_with("network/") {
        Some((GroupKind::Network, "network", "networks", "networkId", "Network"))
    } else if action.starts_with("devicetype/") {
        Some((GroupKind::DeviceType, "deviceType", "deviceTypes", "deviceTypeId", "Device type"))
    } else {
        None
    }
}

/// Runs one action for the session.
pub async fn dispatch(session: &mut Session, action: &str, req: &Value) -> Result<Map<String, Value>> {
    if !ANONYMOUS.contains(&action) && !session.principal.is_authenticated() && is_known(action) {
        return Err(ApiError::unauthorized());
    }
    let hub = session.hub().clone();
    let p = session.principal.clone();
    let f = Fields::of(req)?;
    match action {
        "server/info" => one(
            "info",
            json!({
                "apiVersion": crate::API_VERSION,
                "serverTimestamp": format_ms(now_ms()),
                "restServerUrl": format!("http://{}{}", session.host, hub.settings.http.rest_prefix),
            }),
        ),
        "server/cacheInfo" => one(
            "cacheInfo",
            json!({"serverTimestamp": format_ms(now_ms()),
                   "cacheStats": hub.cache_stats()}),
        ),
        "cluster/info" => one("clusterInfo", json!({"bootstrap.servers": null, "zookeeper.connect": null})),
        "authenticate" => session.authenticate(req).await,
        "token" => into_map(hub.login(req).await?),
        "token/refresh" => {
            if f.str("refreshToken").ok().flatten().is_none() {
                return Err(ApiError::bad_request("Missing or invalid payload in request"));
            }
            into_map(hub.refresh(req).await?)
        }
        "token/create" => {
            let payload = f
                .nested("payload")
                .filter(|v| v.is_object())
                .ok_or_else(|| ApiError::bad_request("Missing or invalid payload in request"))?;
            into_map(hub.create_token(&p, payload).await?)
        }

        "configuration/get" => {
            p.require(crate::auth::Action::ManageConfiguration)?;
            let name = required_text(&f, "name", "Configuration name is wrong or empty")?;
            one("configuration", hub.config_get(&p, &name).await.map_err(with_body)?)
        }
        "configuration/put" => {
            p.require(crate::auth::Action::ManageConfiguration)?;
            let name = required_text(&f, "name", "Configuration name is wrong or empty")?;
            one("configuration", hub.config_put(&p, &name, f.text("value")?.as_deref()).await?)
        }
        "configuration/delete" => {
            p.require(crate::auth::Action::ManageConfiguration)?;
            let name = required_text(&f, "name", "Configuration name is wrong or empty")?;
            hub.config_delete(&p, &name).await?;
            empty()
        }

        "notification/insert" => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let body = required_object(&f, "notification", "Notification is required")?;
            let n = hub.notification_insert(&p, &device, body).await?;
            one("notification", json!({"id": n.id, "timestamp": format_ms(n.timestamp)}))
        }
        "notification/get" => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let id = match f.get("notificationId") {
                None => return Err(ApiError::bad_request("Notification id is wrong or empty")),
                Some(v) => crate::hub::fields::as_i64(v)
                    .ok_or_else(|| ApiError::bad_request("Notification id should be an integer value."))?,
            };
            p.require(crate::auth::Action::GetDeviceNotification)?;
            existing_device(&hub, &device).await?;
            one("notification", hub.notification_get(&p, &device, id).await?)
        }
        "notification/list" => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            p.require(crate::auth::Action::GetDeviceNotification)?;
            existing_device(&hub, &device).await?;
            one("notifications", hub.notification_query(&p, &device, req, WS_DEFAULT_TAKE).await?)
        }
        "notification/subscribe" => session.subscribe(EventKind::Notification, req).await,
        "notification/unsubscribe" => session.unsubscribe(true, req),

        "command/insert" => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let body = required_object(&f, "command", "Command is required")?;
            let c = hub.command_insert(&p, &device, body).await?;
            one("command", c.insert_view())
        }
        "command/update" => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let id = required_id(&f, "commandId", "Command id is wrong or empty")?;
            let body = f.nested("command").cloned().unwrap_or(Value::Null);
            hub.command_update(&p, &device, id, &body).await?;
            empty()
        }
        "command/get" => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let id = required_id(&f, "commandId", "Command id is wrong or empty")?;
            one("command", hub.command_get(&p, &device, id, false).await?)
        }
        "command/list" => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            one("commands", hub.command_query(&p, &device, req, WS_DEFAULT_TAKE).await?)
        }
        "command/subscribe" => session.subscribe(EventKind::CommandInsert, req).await,
        "command/unsubscribe" => session.unsubscribe(false, req),
        "subscription/list" => session.list(req),

        "device/get" => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            one("device", hub.device_get(&p, &device).await?)
        }
        "device/list" => one("devices", hub.device_list(&p, &with_default_take(req)).await?),
        "device/count" => one("count", hub.device_count(&p, req).await?),
        "device/save" => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let body = f.nested("device").cloned().unwrap_or(Value::Null);
            hub.device_save(&p, &device, &body).await?;
            empty()
        }
        "device/delete" => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            hub.device_delete(&p, &device).await?;
            empty()
        }

        "user/list" => one("users", hub.user_list(&p, &with_default_take(req)).await?),
        "user/count" => one("count", hub.user_count(&p, req).await?),
        "user/get" => {
            let id = required_id(&f, "userId", "User id is wrong or empty")?;
            one("user", hub.user_get(&p, id).await?)
        }
        "user/insert" => {
            let body = required_object(&f, "user", "User is required")?;
            one("user", User::insert_view(&hub.user_insert(&p, body).await?))
        }
        "user/update" => {
            let id = required_id(&f, "userId", "User id is wrong or empty")?;
            let body = required_object(&f, "user", "User is required")?;
            hub.user_update(&p, id, body).await?;
            empty()
        }
        "user/getCurrent" => one("current", hub.user_current(&p).await?),
        "user/updateCurrent" => {
            let body = required_object(&f, "user", "User is required")?;
            hub.user_update_current(&p, body).await?;
            empty()
        }
        "user/delete" => {
            let id = required_id(&f, "userId", "User id is wrong or empty")?;
            hub.user_delete(&p, id).await?;
            empty()
        }
        "user/getNetwork" => {
            let id = required_id(&f, "userId", "User id is wrong or empty")?;
            let net = required_id(&f, "networkId", "Network id is wrong or empty")?;
            one("network", hub.user_get_network(&p, id, net).await?)
        }
        "user/assignNetwork" | "user/unassignNetwork" => {
            let id = required_id(&f, "userId", "User id is wrong or empty")?;
            let net = required_id(&f, "networkId", "Network id is wrong or empty")?;
            hub.user_assign_network(&p, id, net, action == "user/assignNetwork").await?;
            empty()
        }
        "user/getDeviceType" => {
            let id = required_id(&f, "userId", "User id is wrong or empty")?;
            let t = required_id(&f, "deviceTypeId", "Device type id is wrong or empty")?;
            one("deviceType", hub.user_get_device_type(&p, id, t).await?)
        }
        "user/getDeviceTypes" => {
            let id = required_id(&f, "userId", "User id is wrong or empty")?;
            one("deviceTypes", hub.user_device_types(&p, id).await?)
        }
        "user/assignDeviceType" | "user/unassignDeviceType" => {
            let id = required_id(&f, "userId", "User id is wrong or empty")?;
            let t = required_id(&f, "deviceTypeId", "Device type id is wrong or empty")?;
            hub.user_assign_device_type(&p, id, t, action == "user/assignDeviceType").await?;
            empty()
        }
        "user/allowAllDeviceTypes" | "user/disallowAllDeviceTypes" => {
            let id = required_id(&f, "userId", "User id is wrong or empty")?;
            hub.user_allow_all_device_types(&p, id, action == "user/allowAllDeviceTypes").await?;
            empty()
        }

        _ => match group_words(action) {
            Some((kind, key, list_key, id_key, noun)) => {
                let verb = &action[action.find('/').map_or(0, |i| i + 1)..];
                let id_message = format!("{noun} id is wrong or empty");
                let required_message = format!("{noun} is required");
                match verb {
                    "list" => one(list_key, hub.group_list(kind, &p, &with_default_take(req)).await?),
                    "count" => one("count", hub.group_count(kind, &p, req).await?),
                    "get" => {
                        let id = required_id(&f, id_key, &id_message)?;
                        one(key, hub.group_get(kind, &p, id).await?)
                    }
                    "insert" => {
                        let body = required_object(&f, key, &required_message)?;
                        if body.get("id").is_some_and(|v| !v.is_null()) {
                            return Err(ApiError::bad_request("Invalid request parameters. Id cannot be specified."));
                        }
                        one(key, json!({"id": hub.group_insert(kind, &p, body).await?}))
                    }
                    "update" => {
                        let id = required_id(&f, id_key, &id_message)?;
                        let body = required_object(&f, key, &required_message)?;
                        hub.group_update(kind, &p, id, body).await?;
                        empty()
                    }
                    "delete" => {
                        let id = required_id(&f, id_key, &id_message)?;
                        hub.group_delete(kind, &p, id, f.bool("force")?.unwrap_or(false)).await?;
                        empty()
                    }
                    _ => Err(ApiError::bad_request(format!("Illegal argument: {action}"))),
                }
            }
            None => Err(ApiError::bad_request(format!("Illegal argument: {action}"))),
        },
    }
}

/// Whether `action` names an entry of the table (unknown ones answer `Illegal argument` even to
/// anonymous sessions).
fn is_known(action: &str) -> bool {
    const GROUP_VERBS: [&str; 6] = ["list", "count", "get", "insert", "update", "delete"];
    const OTHERS: [&str; 38] = [
        "configuration/get",
        "configuration/put",
        "configuration/delete",
        "token/create",
        "notification/insert",
        "notification/get",
        "notification/list",
        "notification/subscribe",
        "notification/unsubscribe",
        "command/insert",
        "command/update",
        "command/get",
        "command/list",
        "command/subscribe",
        "command/unsubscribe",
        "subscription/list",
        "device/get",
        "device/list",
        "device/count",
        "device/save",
        "device/delete",
        "user/list",
        "user/count",
        "user/get",
        "user/insert",
        "user/update",
        "user/getCurrent",
        "user/updateCurrent",
        "user/delete",
        "user/getNetwork",
        "user/assignNetwork",
        "user/unassignNetwork",
        "user/getDeviceType",
        "user/getDeviceTypes",
        "user/assignDeviceType",
        "user/unassignDeviceType",
        "user/allowAllDeviceTypes",
        "user/disallowAllDeviceTypes",
    ];
    if OTHERS.contains(&action) {
        return true;
    }
    match action.split_once('/') {
        Some(("network" | "devicetype", verb)) => GROUP_VERBS.contains(&verb),
        _ => false,
    }
}

fn into_map(v: Value) -> Result<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::internal()),
    }
}

/// The REST 404 for a missing configuration has no body; over WebSocket it carries its message.
fn with_body(mut e: ApiError) -> ApiError {
    e.empty_body = false;
    e
}

/// `notification/get|list` check the device's existence before the device permission (§12.3 note 2).
async fn existing_device(hub: &crate::hub::Hub, device_id: &str) -> Result<()> {
    match hub.store.device_get(device_id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::device_not_found(device_id)),
    }
}
