//! The action table shared by the WebSocket API and MQTT `dh/request`: an action name plus a JSON
//! request maps to a service-layer call and a JSON payload, independent of the socket (§12.3).
//! Transports add the envelope (`action`, `requestId`, `status`) with `envelope`.

use serde_json::{json, Map, Value};

mod action;
mod session;

use crate::error::{ApiError, Result};
use crate::hub::bus::EventKind;
use crate::hub::fields::Fields;
use crate::hub::UserAccess;
use crate::model::GroupKind;
use crate::model::User;
use crate::time::{format_ms, now_ms};
pub use action::{ApiAction, Permission, Target};
pub use session::{push_text, revocation_of, revocation_pending, RevocationWatch, Session};

/// Page size of WebSocket lists when the request gives no `take`.
const WS_DEFAULT_TAKE: i64 = 20;

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
        Some(name) => match ApiAction::parse(name) {
            Some(a) => dispatch(session, a, request).await,
            None => Err(ApiError::bad_request(format!("Illegal argument: {name}"))),
        },
        None => Err(ApiError::bad_request("'action' field could not be parsed to known endpoint")),
    };
    envelope(action, request_id, result)
}

/// The checks every action goes through before its handler, in this order: (1) an anonymous session
/// may call it, else 401; (2) the token carries its action, else 403 "Access is denied"; (3) the
/// object its id field names is within the principal's scope (403) and exists (404) — a missing or
/// malformed id field is 400. Only then does the handler validate the rest of the request.
async fn authorize(session: &Session, action: ApiAction, f: &Fields<'_>) -> Result<()> {
    let p = &session.principal;
    match action.permission() {
        Permission::Anonymous => return Ok(()),
        _ if !p.is_authenticated() => return Err(ApiError::unauthorized()),
        Permission::One(a) => {
            p.require(a)?;
        }
        Permission::Either(a, b) => {
            if p.require(a).is_err() {
                p.require(b)?;
            }
        }
    }
    let hub = session.hub();
    let Some(right) = action.target_action() else { return Ok(()) };
    match action.target() {
        Target::None => {}
        Target::Device => {
            let device = required_text(f, "deviceId", "Device id is wrong or empty")?;
            hub.authorize_device(p, right, &device).await?;
        }
        Target::ExistingDevice => {
            let device = required_text(f, "deviceId", "Device id is wrong or empty")?;
            hub.device_must_exist(&device).await?;
            hub.authorize_device(p, right, &device).await?;
        }
        Target::Group(kind) => {
            let (id_key, noun) = group_id_words(kind);
            let id = required_id(f, id_key, &format!("{noun} id is wrong or empty"))?;
            hub.group_target(kind, p, right, id).await?;
        }
        Target::User => {
            let id = required_id(f, "userId", "User id is wrong or empty")?;
            let access = match action {
                ApiAction::UserGet
                | ApiAction::UserGetNetwork
                | ApiAction::UserGetDeviceType
                | ApiAction::UserGetDeviceTypes => UserAccess::Read,
                ApiAction::UserUpdate => UserAccess::Update(f.nested("user")),
                ApiAction::UserDelete => UserAccess::Delete,
                _ => UserAccess::Assign,
            };
            hub.user_target(p, id, access).await?;
        }
    }
    Ok(())
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

/// (id field, noun) of a group kind, for the messages of its actions.
fn group_id_words(kind: GroupKind) -> (&'static str, &'static str) {
    match kind {
        GroupKind::Network => ("networkId", "Network"),
        GroupKind::DeviceType => ("deviceTypeId", "Device type"),
    }
}

/// (object key, list key) of a group kind.
fn group_keys(kind: GroupKind) -> (&'static str, &'static str) {
    match kind {
        GroupKind::Network => ("network", "networks"),
        GroupKind::DeviceType => ("deviceType", "deviceTypes"),
    }
}

/// Runs one action for the session: the shared checks (`authorize`), then the handler.
pub async fn dispatch(session: &mut Session, action: ApiAction, req: &Value) -> Result<Map<String, Value>> {
    let f = Fields::of(req)?;
    authorize(session, action, &f).await?;
    let hub = session.hub().clone();
    let p = session.principal.clone();
    use ApiAction as A;
    match action {
        A::ServerInfo => one(
            "info",
            json!({
                "apiVersion": crate::API_VERSION,
                "serverTimestamp": format_ms(now_ms()),
                "restServerUrl": hub.rest_server_url(&session.host),
            }),
        ),
        A::ServerCacheInfo => one(
            "cacheInfo",
            json!({"serverTimestamp": format_ms(now_ms()),
                   "cacheStats": hub.cache_stats()}),
        ),
        A::ClusterInfo => one("clusterInfo", json!({"bootstrap.servers": null, "zookeeper.connect": null})),
        A::Authenticate => session.authenticate(req).await,
        A::Token => into_map(hub.login(req, session.peer).await?),
        A::TokenRefresh => {
            if f.str("refreshToken").ok().flatten().is_none() {
                return Err(ApiError::bad_request("Missing or invalid payload in request"));
            }
            into_map(hub.refresh(req).await?)
        }
        A::TokenCreate => {
            let payload = f
                .nested("payload")
                .filter(|v| v.is_object())
                .ok_or_else(|| ApiError::bad_request("Missing or invalid payload in request"))?;
            into_map(hub.create_token(&p, payload).await?)
        }

        A::ConfigurationGet => {
            let name = required_text(&f, "name", "Configuration name is wrong or empty")?;
            one("configuration", hub.config_get(&p, &name).await.map_err(with_body)?)
        }
        A::ConfigurationPut => {
            let name = required_text(&f, "name", "Configuration name is wrong or empty")?;
            one("configuration", hub.config_put(&p, &name, f.text("value")?.as_deref()).await?)
        }
        A::ConfigurationDelete => {
            let name = required_text(&f, "name", "Configuration name is wrong or empty")?;
            hub.config_delete(&p, &name).await?;
            empty()
        }

        A::NotificationInsert => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let body = required_object(&f, "notification", "Notification is required")?;
            let n = hub.notification_insert(&p, &device, body).await?;
            crate::metrics::received(EventKind::Notification, session.transport);
            one("notification", json!({"id": n.id, "timestamp": format_ms(n.timestamp)}))
        }
        A::NotificationGet => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let id = match f.get("notificationId") {
                None => return Err(ApiError::bad_request("Notification id is wrong or empty")),
                Some(v) => crate::hub::fields::as_i64(v)
                    .ok_or_else(|| ApiError::bad_request("Notification id should be an integer value."))?,
            };
            one("notification", hub.notification_get(&p, &device, id).await?)
        }
        A::NotificationList => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            one("notifications", hub.notification_query(&p, &device, req, WS_DEFAULT_TAKE).await?)
        }
        A::NotificationSubscribe => one("subscriptionId", session.subscribe(EventKind::Notification, req).await?.0),
        A::NotificationUnsubscribe => session.unsubscribe(true, req),

        A::CommandInsert => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let body = required_object(&f, "command", "Command is required")?;
            let c = hub.command_insert(&p, &device, body).await?;
            crate::metrics::received(EventKind::CommandInsert, session.transport);
            one("command", c.insert_view())
        }
        A::CommandUpdate => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let id = required_id(&f, "commandId", "Command id is wrong or empty")?;
            let body = f.nested("command").cloned().unwrap_or(Value::Null);
            hub.command_update(&p, &device, id, &body).await?;
            crate::metrics::received(EventKind::CommandUpdate, session.transport);
            empty()
        }
        A::CommandGet => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let id = required_id(&f, "commandId", "Command id is wrong or empty")?;
            one("command", hub.command_get(&p, &device, id, false).await?)
        }
        A::CommandList => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            one("commands", hub.command_query(&p, &device, req, WS_DEFAULT_TAKE).await?)
        }
        A::CommandSubscribe => one("subscriptionId", session.subscribe(EventKind::CommandInsert, req).await?.0),
        A::CommandUnsubscribe => session.unsubscribe(false, req),
        A::SubscriptionList => session.list(req),

        A::DeviceGet => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            one("device", hub.device_get(&p, &device).await?)
        }
        A::DeviceList => one("devices", hub.device_list(&p, &with_default_take(req)).await?),
        A::DeviceCount => one("count", hub.device_count(&p, req).await?),
        A::DeviceSave => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            let body = f.nested("device").cloned().unwrap_or(Value::Null);
            hub.device_save(&p, &device, &body).await?;
            empty()
        }
        A::DeviceDelete => {
            let device = required_text(&f, "deviceId", "Device id is wrong or empty")?;
            hub.device_delete(&p, &device).await?;
            empty()
        }

        A::NetworkList | A::DeviceTypeList => {
            let kind = group_kind(action);
            one(group_keys(kind).1, hub.group_list(kind, &p, &with_default_take(req)).await?)
        }
        A::NetworkCount | A::DeviceTypeCount => one("count", hub.group_count(group_kind(action), &p, req).await?),
        A::NetworkGet | A::DeviceTypeGet => {
            let kind = group_kind(action);
            let id = required_id(&f, group_id_words(kind).0, "")?;
            one(group_keys(kind).0, hub.group_get(kind, &p, id).await?)
        }
        A::NetworkInsert | A::DeviceTypeInsert => {
            let kind = group_kind(action);
            let key = group_keys(kind).0;
            let body = required_object(&f, key, &format!("{} is required", group_id_words(kind).1))?;
            if body.get("id").is_some_and(|v| !v.is_null()) {
                return Err(ApiError::bad_request("Invalid request parameters. Id cannot be specified."));
            }
            one(key, json!({"id": hub.group_insert(kind, &p, body).await?}))
        }
        A::NetworkUpdate | A::DeviceTypeUpdate => {
            let kind = group_kind(action);
            let id = required_id(&f, group_id_words(kind).0, "")?;
            let body = required_object(&f, group_keys(kind).0, &format!("{} is required", group_id_words(kind).1))?;
            hub.group_update(kind, &p, id, body).await?;
            empty()
        }
        A::NetworkDelete | A::DeviceTypeDelete => {
            let kind = group_kind(action);
            let id = required_id(&f, group_id_words(kind).0, "")?;
            hub.group_delete(kind, &p, id, f.bool("force")?.unwrap_or(false)).await?;
            empty()
        }

        A::UserList => one("users", hub.user_list(&p, &with_default_take(req)).await?),
        A::UserCount => one("count", hub.user_count(&p, req).await?),
        A::UserGet => one("user", hub.user_get(&p, user_id(&f)?).await?),
        A::UserInsert => {
            let body = required_object(&f, "user", "User is required")?;
            one("user", User::insert_view(&hub.user_insert(&p, body).await?))
        }
        A::UserUpdate => {
            let id = user_id(&f)?;
            let body = required_object(&f, "user", "User is required")?;
            hub.user_update(&p, id, body).await?;
            empty()
        }
        A::UserGetCurrent => one("current", hub.user_current(&p).await?),
        A::UserUpdateCurrent => {
            let body = required_object(&f, "user", "User is required")?;
            hub.user_update_current(&p, body).await?;
            empty()
        }
        A::UserDelete => {
            hub.user_delete(&p, user_id(&f)?).await?;
            empty()
        }
        A::UserGetNetwork => {
            let net = required_id(&f, "networkId", "Network id is wrong or empty")?;
            one("network", hub.user_get_network(&p, user_id(&f)?, net).await?)
        }
        A::UserAssignNetwork | A::UserUnassignNetwork => {
            let net = required_id(&f, "networkId", "Network id is wrong or empty")?;
            hub.user_assign_network(&p, user_id(&f)?, net, action == A::UserAssignNetwork).await?;
            empty()
        }
        A::UserGetDeviceType => {
            let t = required_id(&f, "deviceTypeId", "Device type id is wrong or empty")?;
            one("deviceType", hub.user_get_device_type(&p, user_id(&f)?, t).await?)
        }
        A::UserGetDeviceTypes => one("deviceTypes", hub.user_device_types(&p, user_id(&f)?).await?),
        A::UserAssignDeviceType | A::UserUnassignDeviceType => {
            let t = required_id(&f, "deviceTypeId", "Device type id is wrong or empty")?;
            hub.user_assign_device_type(&p, user_id(&f)?, t, action == A::UserAssignDeviceType).await?;
            empty()
        }
        A::UserAllowAllDeviceTypes | A::UserDisallowAllDeviceTypes => {
            hub.user_allow_all_device_types(&p, user_id(&f)?, action == A::UserAllowAllDeviceTypes).await?;
            empty()
        }
    }
}

fn group_kind(action: ApiAction) -> GroupKind {
    match action.target() {
        Target::Group(kind) => kind,
        _ if action.name().starts_with("network/") => GroupKind::Network,
        _ => GroupKind::DeviceType,
    }
}

fn user_id(f: &Fields) -> Result<i64> {
    required_id(f, "userId", "User id is wrong or empty")
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
