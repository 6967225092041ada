//! WebSocket API: the shared action table over a real WebSocket client, subscriptions and pushes,
//! cross-transport wake-ups, backpressure and many concurrent sessions (docs/API.md §11, §12).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::TestHub;
use crate::common::ws::{live_subscriptions, wait_live_subscriptions, ws_url, Ws};
use crate::common::{assert_keys, ADMIN_LOGIN, ADMIN_PASSWORD};

const SAMPLE_DEVICE: &str = "e50d6085-2aba-48e9-b1c3-73c673e414be";
const CLIENT_PASSWORD: &str = "client-pass-1";
const NOTIFICATION_KEYS: [&str; 7] =
    ["id", "notification", "deviceId", "networkId", "deviceTypeId", "timestamp", "parameters"];
const COMMAND_KEYS: [&str; 12] = [
    "id",
    "command",
    "timestamp",
    "lastUpdated",
    "userId",
    "deviceId",
    "networkId",
    "deviceTypeId",
    "parameters",
    "lifetime",
    "status",
    "result",
];
const DEVICE_KEYS: [&str; 6] = ["id", "name", "data", "networkId", "deviceTypeId", "isBlocked"];
const SUBSCRIPTION_KEYS: [&str; 7] =
    ["subscriptionId", "type", "deviceId", "networkIds", "deviceTypeIds", "names", "timestamp"];

/// A hub on port 0 (see `TestHub`).
async fn hub() -> TestHub {
    TestHub::start().await
}

async fn hub_with(adjust: impl FnOnce(&mut hivehub::config::Settings)) -> TestHub {
    TestHub::start_with(adjust).await
}

/// `yyyy-MM-ddTHH:mm:ss.SSS`, no zone.
fn assert_ts(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("timestamp string expected: {v}"));
    let b = s.as_bytes();
    let shape = b.len() == 23
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            _ => c.is_ascii_digit(),
        });
    assert!(shape, "bad timestamp format: {s}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn ids_of(pushes: &[Value], key: &str) -> Vec<i64> {
    pushes.iter().map(|p| p[key]["id"].as_i64().unwrap()).collect()
}

/// REST notification insert; returns `{id, timestamp}`.
async fn rest_notification(hub: &TestHub, device: &str, body: Value) -> Value {
    hub.post(&hub.admin, &format!("/device/{device}/notification"), body).await.expect(201)
}

/// REST command insert; returns `{id, timestamp, lastUpdated, userId}`.
async fn rest_command(hub: &TestHub, device: &str, body: Value) -> Value {
    hub.post(&hub.admin, &format!("/device/{device}/command"), body).await.expect(201)
}

async fn device_with_type(hub: &TestHub, id: &str, network: i64, device_type: i64) {
    hub.put(
        &hub.admin,
        &format!("/device/{id}"),
        json!({"name": id, "networkId": network, "deviceTypeId": device_type}),
    )
    .await
    .expect(204);
}

/// Access and refresh tokens of a password login.
async fn token_pair(hub: &TestHub, login: &str, password: &str) -> (String, String) {
    let body = hub
        .request(Method::POST, None, "/token", Some(json!({"login": login, "password": password})))
        .await
        .expect(201);
    (body["accessToken"].as_str().unwrap().to_string(), body["refreshToken"].as_str().unwrap().to_string())
}

/// An admin access token that expired a minute ago.
async fn expired_token(hub: &TestHub) -> String {
    let body = hub
        .post(
            &hub.admin,
            "/token/create",
            json!({"userId": 1, "actions": ["*"], "networkIds": ["*"], "deviceTypeIds": ["*"],
                   "expiration": now_ms() - 60_000, "refreshExpiration": now_ms() + 60_000}),
        )
        .await
        .expect(201);
    body["accessToken"].as_str().unwrap().to_string()
}

// ------------------------------------------------------------------------------------------------
// Envelope, anonymous sessions, parse errors, tokens.
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn websocket_smoke() {
    skip_unless_backend!();
    let hub = hub().await;
    let mut ws = Ws::connect(&hub).await;
    let r = ws.call("server/info", json!({})).await;
    assert_eq!(r["status"], "success");
    assert_eq!(r["info"]["apiVersion"], "3.5.0");
    let r = ws.call("device/list", json!({})).await;
    assert_eq!(
        r,
        json!({"action": "device/list", "requestId": 2, "status": "error", "code": 401, "error": "Unauthorized"})
    );
    ws.send_text("{nope").await;
    assert_eq!(ws.recv().await, json!({"status": "error", "code": 400, "error": "Malformed Json received."}));

    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let sub = ws.subscribe("notification/subscribe", json!({"deviceId": SAMPLE_DEVICE})).await;
    let inserted =
        rest_notification(&hub, SAMPLE_DEVICE, json!({"notification": "hello", "parameters": {"a": [1, 2]}})).await;
    let push = ws.push().await;
    assert_keys(&push, &["action", "subscriptionId", "notification"]);
    assert_eq!(push["action"], "notification/insert");
    assert_eq!(push["subscriptionId"], sub);
    // The pushed notification is the full view, identical to what REST returns.
    let stored =
        hub.get(&hub.admin, &format!("/device/{SAMPLE_DEVICE}/notification/{}", inserted["id"])).await.expect(200);
    assert_keys(&push["notification"], &NOTIFICATION_KEYS);
    assert_eq!(push["notification"], stored);
    assert_eq!(
        push["notification"],
        json!({"id": inserted["id"], "notification": "hello", "deviceId": SAMPLE_DEVICE, "networkId": 1,
               "deviceTypeId": 1, "timestamp": inserted["timestamp"], "parameters": {"a": [1, 2]}})
    );
}

#[tokio::test]
async fn anonymous_session_envelopes_and_parse_errors() {
    skip_unless_backend!();
    let hub = hub().await;
    let mut ws = Ws::connect(&hub).await;
    let host = hub.root.trim_start_matches("http://").to_string();

    // Non-numeric requestIds are echoed as sent.
    let r = ws.request(json!({"action": "server/info", "requestId": "req-α"})).await;
    assert_keys(&r, &["action", "requestId", "status", "info"]);
    assert_eq!(r["action"], "server/info");
    assert_eq!(r["requestId"], "req-α");
    assert_eq!(r["status"], "success");
    assert_keys(&r["info"], &["apiVersion", "serverTimestamp", "restServerUrl"]);
    assert_eq!(r["info"]["apiVersion"], "3.5.0");
    assert_eq!(r["info"]["restServerUrl"], format!("http://{host}/api/rest"));
    assert_ts(&r["info"]["serverTimestamp"]);

    let rid = json!({"k": [1, "two", null]});
    let r = ws.request(json!({"action": "server/cacheInfo", "requestId": rid.clone()})).await;
    assert_keys(&r, &["action", "requestId", "status", "cacheInfo"]);
    assert_eq!(r["requestId"], rid);
    assert_eq!(r["status"], "success");
    assert_keys(&r["cacheInfo"], &["serverTimestamp", "cacheStats"]);
    assert_ts(&r["cacheInfo"]["serverTimestamp"]);
    assert!(r["cacheInfo"]["cacheStats"].is_string(), "{r}");

    // Without a requestId the response carries `"requestId": null`.
    ws.send_text(r#"{"action":"cluster/info"}"#).await;
    let r = ws.recv().await;
    assert_keys(&r, &["action", "requestId", "status", "clusterInfo"]);
    assert_eq!(r["requestId"], Value::Null);
    assert_eq!(r["status"], "success");
    assert_keys(&r["clusterInfo"], &["bootstrap.servers", "zookeeper.connect"]);

    let r = ws.request(json!({"action": "server/info", "requestId": 2.5})).await;
    assert_eq!(r["requestId"], 2.5);
    let r = ws.request(json!({"action": "server/info", "requestId": true})).await;
    assert_eq!(r["requestId"], true);

    // Only the six anonymous actions work before authenticate; every other known action is 401.
    let protected = [
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
        "network/list",
        "network/count",
        "network/get",
        "network/insert",
        "network/update",
        "network/delete",
        "devicetype/list",
        "devicetype/count",
        "devicetype/get",
        "devicetype/insert",
        "devicetype/update",
        "devicetype/delete",
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
    for action in protected {
        ws.err(action, json!({"deviceId": SAMPLE_DEVICE}), 401, "Unauthorized").await;
    }

    // Unknown and missing actions.
    ws.err("x", json!({}), 400, "Illegal argument: x").await;
    ws.err("network/frobnicate", json!({}), 400, "Illegal argument: network/frobnicate").await;
    let r = ws.request(json!({"requestId": "no-action"})).await;
    assert_eq!(r["requestId"], "no-action");
    assert_eq!(r["status"], "error");
    assert_eq!(r["code"], 400);
    assert_eq!(r["error"], "'action' field could not be parsed to known endpoint");
    assert!(r.get("action").is_none_or(Value::is_null), "{r}");
    let r = ws.request(json!({"action": 42, "requestId": 7})).await;
    assert_eq!(
        r,
        json!({"action": 42, "requestId": 7, "status": "error", "code": 400,
               "error": "'action' field could not be parsed to known endpoint"})
    );

    // Malformed JSON and JSON that is not an object.
    for bad in ["{nope", "[1,2]", "\"server/info\"", "42", ""] {
        ws.send_text(bad).await;
        assert_eq!(
            ws.recv().await,
            json!({"status": "error", "code": 400, "error": "Malformed Json received."}),
            "for {bad:?}"
        );
    }

    // Binary frames carrying JSON are understood too.
    ws.stream.send(Message::Binary(br#"{"action":"server/info","requestId":"bin"}"#.to_vec().into())).await.unwrap();
    let r = ws.recv().await;
    assert_eq!(r["requestId"], "bin");
    assert_eq!(r["status"], "success");

    // `token` logs in over the socket; errors carry the REST status and message.
    let r = ws
        .ok("token", json!({"login": ADMIN_LOGIN, "password": ADMIN_PASSWORD}), &["accessToken", "refreshToken"])
        .await;
    let access = r["accessToken"].as_str().unwrap().to_string();
    let refresh = r["refreshToken"].as_str().unwrap().to_string();
    ws.err("token", json!({"login": ADMIN_LOGIN, "password": "wrong-password"}), 401, "Invalid credentials").await;
    ws.err("token", json!({"login": "nobody", "password": "whatever1"}), 401, "Invalid credentials").await;
    ws.err("token", json!({}), 400, "Invalid or empty authorization request parameters").await;

    // `token/refresh`.
    let r = ws.ok("token/refresh", json!({"refreshToken": refresh}), &["accessToken"]).await;
    let refreshed = r["accessToken"].as_str().unwrap().to_string();
    ws.err("token/refresh", json!({}), 400, "Missing or invalid payload in request").await;
    ws.err("token/refresh", json!({"refreshToken": access}), 401, "Invalid token type").await;

    // Still anonymous: `token` does not authenticate the session.
    ws.err("device/list", json!({}), 401, "Unauthorized").await;
    // The refreshed access token authenticates.
    let r = ws.call("authenticate", json!({"token": refreshed})).await;
    assert_eq!(r, json!({"action": "authenticate", "requestId": ws.next_id - 1, "status": "success"}));
    ws.ok("device/list", json!({}), &["devices"]).await;
    // Unknown actions are still 400 after authentication.
    ws.err("x", json!({}), 400, "Illegal argument: x").await;
}

#[tokio::test]
async fn authenticate_errors_keep_the_previous_principal() {
    skip_unless_backend!();
    let hub = hub().await;
    let net = hub.network("auth-net").await;
    let (_, client) = hub.client_user("ws-auth-client", &[net]).await;
    let (_, refresh) = token_pair(&hub, "ws-auth-client", CLIENT_PASSWORD).await;
    let expired = expired_token(&hub).await;

    let mut ws = Ws::connect(&hub).await;
    // Failures on an anonymous session leave it anonymous.
    ws.err("authenticate", json!({}), 401, "Unauthorized").await;
    ws.err("authenticate", json!({"token": null}), 401, "Unauthorized").await;
    ws.err("authenticate", json!({"token": "garbage"}), 401, "Invalid credentials").await;
    ws.err("authenticate", json!({"token": refresh.clone()}), 401, "Invalid credentials").await;
    ws.err("authenticate", json!({"token": expired.clone()}), 401, "Token expired").await;
    ws.err("user/getCurrent", json!({}), 401, "Unauthorized").await;

    // Authenticate as the client.
    ws.ok("authenticate", json!({"token": client}), &[]).await;
    let r = ws.ok("user/getCurrent", json!({}), &["current"]).await;
    assert_eq!(r["current"]["login"], "ws-auth-client");

    // Failed re-authentication keeps the client principal.
    ws.err("authenticate", json!({"token": "garbage"}), 401, "Invalid credentials").await;
    ws.err("authenticate", json!({"token": expired}), 401, "Token expired").await;
    ws.err("authenticate", json!({"token": refresh}), 401, "Invalid credentials").await;
    ws.err("authenticate", json!({}), 401, "Unauthorized").await;
    let r = ws.ok("user/getCurrent", json!({}), &["current"]).await;
    assert_eq!(r["current"]["login"], "ws-auth-client");
    ws.err("user/list", json!({}), 403, "Access is denied").await;

    // Re-authentication replaces the principal.
    ws.ok("authenticate", json!({"token": hub.admin.clone()}), &[]).await;
    let r = ws.ok("user/getCurrent", json!({}), &["current"]).await;
    assert_eq!(r["current"]["login"], ADMIN_LOGIN);
    assert_eq!(r["current"]["role"], 0);
    ws.ok("user/list", json!({}), &["users"]).await;
}

// ------------------------------------------------------------------------------------------------
// The action table (§12.3): success shapes and documented errors.
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn configuration_and_token_create_actions() {
    skip_unless_backend!();
    let hub = hub().await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;

    let r = ws.ok("configuration/put", json!({"name": "ws.test", "value": "v1"}), &["configuration"]).await;
    assert_eq!(r["configuration"]["name"], "ws.test");
    assert_eq!(r["configuration"]["value"], "v1");
    assert!(r["configuration"]["entityVersion"].is_i64(), "{r}");
    let r = ws.ok("configuration/get", json!({"name": "ws.test"}), &["configuration"]).await;
    assert_eq!(r["configuration"]["value"], "v1");
    let r = ws.ok("configuration/put", json!({"name": "ws.test", "value": "v2"}), &["configuration"]).await;
    assert_eq!(r["configuration"]["value"], "v2");
    // The REST twin sees the same entry.
    let rest = hub.get(&hub.admin, "/configuration/ws.test").await.expect(200);
    assert_eq!(rest["value"], "v2");

    for action in ["configuration/get", "configuration/put", "configuration/delete"] {
        ws.err(action, json!({}), 400, "Configuration name is wrong or empty").await;
        ws.err(action, json!({"name": ""}), 400, "Configuration name is wrong or empty").await;
    }
    ws.err(
        "configuration/get",
        json!({"name": "nope"}),
        404,
        "Requested config with name = nope not found in the database",
    )
    .await;
    ws.err(
        "configuration/put",
        json!({"name": "n".repeat(33), "value": "x"}),
        400,
        "Name cannot be empty. The name's length should not be more than 32 symbols.",
    )
    .await;
    ws.ok("configuration/delete", json!({"name": "ws.test"}), &[]).await;
    ws.err(
        "configuration/get",
        json!({"name": "ws.test"}),
        404,
        "Requested config with name = ws.test not found in the database",
    )
    .await;
    ws.err(
        "configuration/delete",
        json!({"name": "ws.test"}),
        404,
        "Requested config with name = ws.test not found in the database",
    )
    .await;

    // token/create.
    let r = ws
        .ok(
            "token/create",
            json!({"payload": {"userId": 1, "actions": ["GetNetwork"], "networkIds": ["*"], "deviceTypeIds": ["*"]}}),
            &["accessToken", "refreshToken"],
        )
        .await;
    let limited = r["accessToken"].as_str().unwrap().to_string();
    ws.err("token/create", json!({}), 400, "Missing or invalid payload in request").await;
    ws.err("token/create", json!({"payload": "text"}), 400, "Missing or invalid payload in request").await;
    ws.err(
        "token/create",
        json!({"payload": {"userId": 9999, "actions": ["*"]}}),
        404,
        "User with id = 9999 not found",
    )
    .await;
    // The minted token carries only its actions.
    let mut limited_ws = Ws::authenticated(&hub, &limited).await;
    limited_ws.ok("network/list", json!({}), &["networks"]).await;
    limited_ws.err("device/list", json!({}), 403, "Access is denied").await;

    // A client cannot manage configuration.
    let (_, client) = hub.client_user("ws-conf-client", &[1]).await;
    let mut cws = Ws::authenticated(&hub, &client).await;
    cws.err("configuration/get", json!({"name": "x"}), 403, "Access is denied").await;
    cws.err("configuration/put", json!({"name": "x", "value": "y"}), 403, "Access is denied").await;
    cws.err("configuration/delete", json!({"name": "x"}), 403, "Access is denied").await;
}

#[tokio::test]
async fn notification_actions() {
    skip_unless_backend!();
    let hub = hub().await;
    hub.device("ws-n1", 1).await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;

    let r = ws
        .ok(
            "notification/insert",
            json!({"deviceId": "ws-n1", "notification": {"notification": "temp", "parameters": {"t": 21.5}}}),
            &["notification"],
        )
        .await;
    assert_keys(&r["notification"], &["id", "timestamp"]);
    assert_ts(&r["notification"]["timestamp"]);
    let id = r["notification"]["id"].as_i64().unwrap();
    let ts = r["notification"]["timestamp"].clone();

    // Client-supplied timestamp is stored as given (normalised).
    let r = ws
        .ok(
            "notification/insert",
            json!({"deviceId": "ws-n1", "notification": {"notification": "old", "timestamp": "2020-01-02T03:04:05.678Z"}}),
            &["notification"],
        )
        .await;
    assert_eq!(r["notification"]["timestamp"], "2020-01-02T03:04:05.678");
    let old_id = r["notification"]["id"].as_i64().unwrap();

    let r = ws.ok("notification/get", json!({"deviceId": "ws-n1", "notificationId": id}), &["notification"]).await;
    assert_keys(&r["notification"], &NOTIFICATION_KEYS);
    assert_eq!(
        r["notification"],
        json!({"id": id, "notification": "temp", "deviceId": "ws-n1", "networkId": 1, "deviceTypeId": 1,
               "timestamp": ts, "parameters": {"t": 21.5}})
    );
    // Numeric fields accept digit strings.
    let r2 = ws
        .ok("notification/get", json!({"deviceId": "ws-n1", "notificationId": id.to_string()}), &["notification"])
        .await;
    assert_eq!(r2["notification"], r["notification"]);
    // The stored row equals the REST view.
    let rest = hub.get(&hub.admin, &format!("/device/ws-n1/notification/{id}")).await.expect(200);
    assert_eq!(r["notification"], rest);

    // list: default DESC by timestamp; filters by name; take/skip; WS default take 20.
    let r = ws.ok("notification/list", json!({"deviceId": "ws-n1"}), &["notifications"]).await;
    let names: Vec<&str> =
        r["notifications"].as_array().unwrap().iter().map(|n| n["notification"].as_str().unwrap()).collect();
    assert_eq!(names, ["temp", "$device-add", "old"]);
    for n in r["notifications"].as_array().unwrap() {
        assert_keys(n, &NOTIFICATION_KEYS);
    }
    let r = ws.ok("notification/list", json!({"deviceId": "ws-n1", "notification": "old"}), &["notifications"]).await;
    assert_eq!(ids_of_list(&r["notifications"]), [old_id]);
    let r = ws
        .ok(
            "notification/list",
            json!({"deviceId": "ws-n1", "names": ["old", "temp"], "sortOrder": "ASC"}),
            &["notifications"],
        )
        .await;
    assert_eq!(ids_of_list(&r["notifications"]), [old_id, id]);
    let r = ws
        .ok(
            "notification/list",
            json!({"deviceId": "ws-n1", "start": "2020-01-01", "end": "2020-12-31"}),
            &["notifications"],
        )
        .await;
    assert_eq!(ids_of_list(&r["notifications"]), [old_id]);
    for i in 0..25 {
        rest_notification(&hub, "ws-n1", json!({"notification": format!("bulk-{i}")})).await;
    }
    let r = ws.ok("notification/list", json!({"deviceId": "ws-n1"}), &["notifications"]).await;
    assert_eq!(r["notifications"].as_array().unwrap().len(), 20);
    let r = ws.ok("notification/list", json!({"deviceId": "ws-n1", "take": 100}), &["notifications"]).await;
    assert_eq!(r["notifications"].as_array().unwrap().len(), 28);
    let r = ws
        .ok(
            "notification/list",
            json!({"deviceId": "ws-n1", "take": 100, "skip": 26, "sortOrder": "DESC"}),
            &["notifications"],
        )
        .await;
    let names: Vec<&str> =
        r["notifications"].as_array().unwrap().iter().map(|n| n["notification"].as_str().unwrap()).collect();
    assert_eq!(names, ["$device-add", "old"]);

    // Errors; the socket stays usable after each.
    ws.err("notification/insert", json!({"notification": {"notification": "x"}}), 400, "Device id is wrong or empty")
        .await;
    ws.err(
        "notification/insert",
        json!({"deviceId": "", "notification": {"notification": "x"}}),
        400,
        "Device id is wrong or empty",
    )
    .await;
    ws.err("notification/insert", json!({"deviceId": "ws-n1"}), 400, "Notification is required").await;
    ws.err("notification/insert", json!({"deviceId": "ws-n1", "notification": null}), 400, "Notification is required")
        .await;
    ws.err(
        "notification/insert",
        json!({"deviceId": "nope", "notification": {"notification": "x"}}),
        404,
        "Device with such deviceId = nope not found",
    )
    .await;
    ws.err(
        "notification/insert",
        json!({"deviceId": "ws-n1", "notification": {"notification": "x", "parameters": "text"}}),
        400,
        "'parameters' must be JSON Object!",
    )
    .await;
    for special in ["$device-add", "$device-update"] {
        ws.err(
            "notification/insert",
            json!({"deviceId": "ws-n1", "notification": {"notification": special}}),
            403,
            "It's forbidden to insert these special notifications: $device-update, $device-add.",
        )
        .await;
    }
    ws.err("notification/get", json!({"notificationId": id}), 400, "Device id is wrong or empty").await;
    ws.err("notification/get", json!({"deviceId": "ws-n1"}), 400, "Notification id is wrong or empty").await;
    ws.err(
        "notification/get",
        json!({"deviceId": "ws-n1", "notificationId": null}),
        400,
        "Notification id is wrong or empty",
    )
    .await;
    ws.err(
        "notification/get",
        json!({"deviceId": "ws-n1", "notificationId": "abc"}),
        400,
        "Notification id should be an integer value.",
    )
    .await;
    ws.err(
        "notification/get",
        json!({"deviceId": "ws-n1", "notificationId": 987654321}),
        404,
        "Requested notification not found",
    )
    .await;
    ws.err(
        "notification/get",
        json!({"deviceId": "nope", "notificationId": id}),
        404,
        "Device with such deviceId = nope not found",
    )
    .await;
    // A notification of another device is not found through this device.
    ws.err(
        "notification/get",
        json!({"deviceId": SAMPLE_DEVICE, "notificationId": id}),
        404,
        "Requested notification not found",
    )
    .await;
    ws.err("notification/list", json!({}), 400, "Device id is wrong or empty").await;
    ws.err("notification/list", json!({"deviceId": "nope"}), 404, "Device with such deviceId = nope not found").await;
    ws.err("notification/list", json!({"deviceId": "ws-n1", "start": "not-a-date"}), 400, "Unparseable timestamp")
        .await;
    ws.ok("server/info", json!({}), &["info"]).await;
}

fn ids_of_list(list: &Value) -> Vec<i64> {
    list.as_array().unwrap().iter().map(|m| m["id"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn command_actions() {
    skip_unless_backend!();
    let hub = hub().await;
    hub.device("ws-c1", 1).await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;

    let r = ws
        .ok(
            "command/insert",
            json!({"deviceId": "ws-c1", "command": {"command": "reboot", "parameters": {"delay": 5}, "lifetime": 30, "status": "new"}}),
            &["command"],
        )
        .await;
    assert_keys(&r["command"], &["id", "timestamp", "lastUpdated", "userId"]);
    assert_ts(&r["command"]["timestamp"]);
    assert_eq!(r["command"]["lastUpdated"], r["command"]["timestamp"]);
    assert_eq!(r["command"]["userId"], 1);
    let id = r["command"]["id"].as_i64().unwrap();
    let ts = r["command"]["timestamp"].clone();

    let r = ws.ok("command/get", json!({"deviceId": "ws-c1", "commandId": id}), &["command"]).await;
    assert_keys(&r["command"], &COMMAND_KEYS);
    assert_eq!(
        r["command"],
        json!({"id": id, "command": "reboot", "timestamp": ts, "lastUpdated": ts, "userId": 1,
               "deviceId": "ws-c1", "networkId": 1, "deviceTypeId": 1, "parameters": {"delay": 5},
               "lifetime": 30, "status": "new", "result": null})
    );

    let other = ws
        .ok("command/insert", json!({"deviceId": "ws-c1", "command": {"command": "ping"}}), &["command"])
        .await["command"]["id"]
        .as_i64()
        .unwrap();

    tokio::time::sleep(Duration::from_millis(5)).await;
    ws.ok(
        "command/update",
        json!({"deviceId": "ws-c1", "commandId": id.to_string(), "command": {"status": "done", "result": {"ok": true}}}),
        &[],
    )
    .await;
    let r = ws.ok("command/get", json!({"deviceId": "ws-c1", "commandId": id}), &["command"]).await;
    assert_eq!(r["command"]["status"], "done");
    assert_eq!(r["command"]["result"], json!({"ok": true}));
    assert_eq!(r["command"]["timestamp"], ts);
    assert_ts(&r["command"]["lastUpdated"]);
    assert!(r["command"]["lastUpdated"].as_str().unwrap() > ts.as_str().unwrap(), "{r}");
    // The REST twin agrees.
    let rest = hub.get(&hub.admin, &format!("/device/ws-c1/command/{id}")).await.expect(200);
    assert_eq!(r["command"], rest);

    // list and its filters.
    let r = ws.ok("command/list", json!({"deviceId": "ws-c1"}), &["commands"]).await;
    assert_eq!(ids_of_list(&r["commands"]), [other, id]);
    for c in r["commands"].as_array().unwrap() {
        assert_keys(c, &COMMAND_KEYS);
    }
    let r = ws.ok("command/list", json!({"deviceId": "ws-c1", "command": "ping"}), &["commands"]).await;
    assert_eq!(ids_of_list(&r["commands"]), [other]);
    let r = ws.ok("command/list", json!({"deviceId": "ws-c1", "status": "done"}), &["commands"]).await;
    assert_eq!(ids_of_list(&r["commands"]), [id]);
    let r = ws.ok("command/list", json!({"deviceId": "ws-c1", "returnUpdated": true}), &["commands"]).await;
    assert_eq!(ids_of_list(&r["commands"]), [id]);
    let r = ws
        .ok("command/list", json!({"deviceId": "ws-c1", "sortOrder": "ASC", "take": 1, "skip": 1}), &["commands"])
        .await;
    assert_eq!(ids_of_list(&r["commands"]), [other]);

    // Errors.
    ws.err("command/insert", json!({"command": {"command": "x"}}), 400, "Device id is wrong or empty").await;
    ws.err("command/insert", json!({"deviceId": "ws-c1"}), 400, "Command is required").await;
    ws.err("command/insert", json!({"deviceId": "ws-c1", "command": {"parameters": {}}}), 400, "Command is required")
        .await;
    ws.err(
        "command/insert",
        json!({"deviceId": "nope", "command": {"command": "x"}}),
        404,
        "Device with such deviceId = nope not found",
    )
    .await;
    ws.err(
        "command/update",
        json!({"deviceId": "ws-c1", "command": {"status": "x"}}),
        400,
        "Command id is wrong or empty",
    )
    .await;
    ws.err("command/update", json!({"commandId": id, "command": {"status": "x"}}), 400, "Device id is wrong or empty")
        .await;
    ws.err(
        "command/update",
        json!({"deviceId": "ws-c1", "commandId": 987654321, "command": {"status": "x"}}),
        404,
        "Command with id = 987654321 not found",
    )
    .await;
    ws.err(
        "command/update",
        json!({"deviceId": "ws-c1", "commandId": id, "command": {"result": "text"}}),
        400,
        "'parameters' must be JSON Object!",
    )
    .await;
    ws.err("command/get", json!({"deviceId": "ws-c1"}), 400, "Command id is wrong or empty").await;
    ws.err("command/get", json!({"commandId": id}), 400, "Device id is wrong or empty").await;
    ws.err(
        "command/get",
        json!({"deviceId": "ws-c1", "commandId": 987654321}),
        404,
        "Command with id = 987654321 not found",
    )
    .await;
    // A command of another device is not found through this device.
    ws.err(
        "command/get",
        json!({"deviceId": SAMPLE_DEVICE, "commandId": id}),
        404,
        format!("Command with id = {id} not found").as_str(),
    )
    .await;
    ws.err(
        "command/get",
        json!({"deviceId": "nope", "commandId": id}),
        404,
        "Device with such deviceId = nope not found",
    )
    .await;
    ws.err("command/list", json!({}), 400, "Device id is wrong or empty").await;
    ws.err("command/list", json!({"deviceId": "nope"}), 404, "Device with such deviceId = nope not found").await;
    ws.ok("server/info", json!({}), &["info"]).await;
}

#[tokio::test]
async fn device_actions() {
    skip_unless_backend!();
    let hub = hub().await;
    let net = hub.network("ws-dev-net").await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;

    ws.ok(
        "device/save",
        json!({"deviceId": "ws-d1", "device": {"name": "D1", "networkId": net, "deviceTypeId": 2, "data": {"x": 1}}}),
        &[],
    )
    .await;
    let r = ws.ok("device/get", json!({"deviceId": "ws-d1"}), &["device"]).await;
    assert_keys(&r["device"], &DEVICE_KEYS);
    assert_eq!(
        r["device"],
        json!({"id": "ws-d1", "name": "D1", "data": {"x": 1}, "networkId": net, "deviceTypeId": 2, "isBlocked": false})
    );
    // Update: partial fields, `data` replaced.
    ws.ok("device/save", json!({"deviceId": "ws-d1", "device": {"isBlocked": true}}), &[]).await;
    let r = ws.ok("device/get", json!({"deviceId": "ws-d1"}), &["device"]).await;
    assert_eq!(
        r["device"],
        json!({"id": "ws-d1", "name": "D1", "data": null, "networkId": net, "deviceTypeId": 2, "isBlocked": true})
    );
    // Defaults: lowest network of the user, lowest device type.
    ws.ok("device/save", json!({"deviceId": "ws-d2", "device": {"name": "D2"}}), &[]).await;
    let r = ws.ok("device/get", json!({"deviceId": "ws-d2"}), &["device"]).await;
    assert_eq!(r["device"]["networkId"], 1);
    assert_eq!(r["device"]["deviceTypeId"], 1);

    let r = ws.ok("device/list", json!({"networkId": net}), &["devices"]).await;
    assert_eq!(
        r["devices"],
        json!([{"id": "ws-d1", "name": "D1", "data": null, "networkId": net, "deviceTypeId": 2, "isBlocked": true}])
    );
    let r = ws.ok("device/list", json!({"sortField": "name", "sortOrder": "DESC"}), &["devices"]).await;
    let names: Vec<&str> = r["devices"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Sample Device", "D2", "D1"]);
    let r = ws.ok("device/list", json!({"namePattern": "D%"}), &["devices"]).await;
    assert_eq!(r["devices"].as_array().unwrap().len(), 2);
    let r = ws.ok("device/count", json!({}), &["count"]).await;
    assert_eq!(r["count"], 3);
    let r = ws.ok("device/count", json!({"networkId": net}), &["count"]).await;
    assert_eq!(r["count"], 1);
    // WS list default page is 20.
    for i in 0..22 {
        hub.device(&format!("bulk-{i:02}"), net).await;
    }
    let r = ws.ok("device/list", json!({}), &["devices"]).await;
    assert_eq!(r["devices"].as_array().unwrap().len(), 20);
    let r = ws.ok("device/count", json!({}), &["count"]).await;
    assert_eq!(r["count"], 25);

    // Errors.
    ws.err("device/save", json!({"device": {"name": "x"}}), 400, "Device id is wrong or empty").await;
    ws.err(
        "device/save",
        json!({"deviceId": "bad_id!", "device": {"name": "x"}}),
        400,
        "Device Id can only contain letters, digits and dashes.",
    )
    .await;
    ws.err("device/save", json!({"deviceId": "ws-d3"}), 400, "Invalid request parameters").await;
    ws.err(
        "device/save",
        json!({"deviceId": "ws-d3", "device": {"name": "x", "networkId": 9999}}),
        400,
        "Invalid request parameters",
    )
    .await;
    ws.err("device/get", json!({}), 400, "Device id is wrong or empty").await;
    ws.err("device/get", json!({"deviceId": "nope"}), 404, "Device with such deviceId = nope not found").await;
    ws.err("device/delete", json!({}), 400, "Device id is wrong or empty").await;
    ws.err("device/delete", json!({"deviceId": "nope"}), 404, "Device with such deviceId = nope not found").await;
    ws.err("device/list", json!({"sortField": "color"}), 400, "Invalid request parameters").await;

    ws.ok("device/delete", json!({"deviceId": "ws-d1"}), &[]).await;
    ws.err("device/get", json!({"deviceId": "ws-d1"}), 404, "Device with such deviceId = ws-d1 not found").await;
    hub.get(&hub.admin, "/device/ws-d1").await.expect_error(404, "Device with such deviceId = ws-d1 not found");
}

#[tokio::test]
async fn network_and_device_type_actions() {
    skip_unless_backend!();
    let hub = hub().await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;

    // (prefix, object key, list key, id key, noun)
    let kinds = [
        ("network", "network", "networks", "networkId", "Network"),
        ("devicetype", "deviceType", "deviceTypes", "deviceTypeId", "Device type"),
    ];
    for (prefix, key, list_key, id_key, noun) in kinds {
        let a = |verb: &str| format!("{prefix}/{verb}");
        let r = ws.ok(&a("insert"), json!({key: {"name": "WsGroup", "description": "first"}}), &[key]).await;
        assert_keys(&r[key], &["id"]);
        let id = r[key]["id"].as_i64().unwrap();

        let r = ws.ok(&a("get"), json!({id_key: id}), &[key]).await;
        assert_eq!(r[key], json!({"id": id, "name": "WsGroup", "description": "first", "devices": []}));
        let r = ws.ok(&a("list"), json!({"name": "WsGroup"}), &[list_key]).await;
        assert_eq!(r[list_key], json!([{"id": id, "name": "WsGroup", "description": "first"}]));
        let r = ws.ok(&a("list"), json!({"namePattern": "Ws%", "sortField": "id"}), &[list_key]).await;
        assert_eq!(r[list_key].as_array().unwrap().len(), 1);
        let r = ws.ok(&a("count"), json!({"name": "WsGroup"}), &["count"]).await;
        assert_eq!(r["count"], 1);

        ws.ok(&a("update"), json!({id_key: id.to_string(), key: {"description": "second"}}), &[]).await;
        let r = ws.ok(&a("get"), json!({id_key: id}), &[key]).await;
        assert_eq!(r[key]["description"], "second");
        assert_eq!(r[key]["name"], "WsGroup");

        // A device in the group shows up in `get`, and blocks a non-forced delete.
        let device_body = if prefix == "network" {
            json!({"name": "member", "networkId": id})
        } else {
            json!({"name": "member", "deviceTypeId": id})
        };
        ws.ok("device/save", json!({"deviceId": format!("member-{prefix}"), "device": device_body}), &[]).await;
        let r = ws.ok(&a("get"), json!({id_key: id}), &[key]).await;
        assert_eq!(
            r[key]["devices"],
            json!([{"id": format!("member-{prefix}"), "name": "member", "data": null, "isBlocked": false}])
        );
        let plural = if prefix == "network" { "network" } else { "device type" };
        ws.err(
            &a("delete"),
            json!({id_key: id}),
            400,
            &format!(
                "There are the following devices within this {plural}: member-{prefix}. Please review and delete them first."
            ),
        )
        .await;
        ws.ok(&a("delete"), json!({id_key: id, "force": true}), &[]).await;
        ws.err(&a("get"), json!({id_key: id}), 404, &format!("{noun} with id = {id} not found")).await;
        ws.err(
            "device/get",
            json!({"deviceId": format!("member-{prefix}")}),
            404,
            &format!("Device with such deviceId = member-{prefix} not found"),
        )
        .await;

        // Errors.
        let id_message = format!("{noun} id is wrong or empty");
        let required = format!("{noun} is required");
        ws.err(&a("insert"), json!({}), 400, &required).await;
        ws.err(
            &a("insert"),
            json!({key: {"id": 77, "name": "WithId"}}),
            400,
            "Invalid request parameters. Id cannot be specified.",
        )
        .await;
        ws.err(&a("get"), json!({}), 400, &id_message).await;
        ws.err(&a("update"), json!({key: {"name": "x"}}), 400, &id_message).await;
        ws.err(&a("update"), json!({id_key: 1}), 400, &required).await;
        ws.err(&a("delete"), json!({}), 400, &id_message).await;
        ws.err(&a("get"), json!({id_key: 9999}), 404, &format!("{noun} with id = 9999 not found")).await;
        ws.err(
            &a("update"),
            json!({id_key: 9999, key: {"name": "x"}}),
            404,
            &format!("{noun} with id = 9999 not found"),
        )
        .await;
        ws.err(&a("delete"), json!({id_key: 9999}), 404, &format!("{noun} with id = 9999 not found")).await;
        let dup_name = if prefix == "network" { "Sample Network" } else { "Default Device Type" };
        ws.err(
            &a("insert"),
            json!({key: {"name": dup_name}}),
            403,
            &format!("{noun} cannot be created. {noun} with such name already exists"),
        )
        .await;
    }

    // Clients read their networks only and cannot manage groups.
    let net = hub.network("ws-client-net").await;
    hub.network("ws-other-net").await;
    let (_, client) = hub.client_user("ws-group-client", &[net]).await;
    let mut cws = Ws::authenticated(&hub, &client).await;
    let r = cws.ok("network/list", json!({}), &["networks"]).await;
    assert_eq!(r["networks"], json!([{"id": net, "name": "ws-client-net", "description": null}]));
    let r = cws.ok("network/count", json!({}), &["count"]).await;
    assert_eq!(r["count"], 1);
    cws.ok("network/get", json!({"networkId": net}), &["network"]).await;
    cws.err("network/insert", json!({"network": {"name": "mine"}}), 403, "Access is denied").await;
    cws.err("devicetype/insert", json!({"deviceType": {"name": "mine"}}), 403, "Access is denied").await;
    cws.err("network/delete", json!({"networkId": net}), 403, "Access is denied").await;
    let r = cws.ok("devicetype/list", json!({}), &["deviceTypes"]).await;
    assert_eq!(r["deviceTypes"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn user_actions() {
    skip_unless_backend!();
    let hub = hub().await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;

    let r = ws
        .ok(
            "user/insert",
            json!({"user": {"login": "wsuser", "password": "secret-pass", "role": 1, "data": {"k": "v"}}}),
            &["user"],
        )
        .await;
    assert_keys(&r["user"], &["id", "lastLogin", "data", "introReviewed", "allDeviceTypesAvailable"]);
    assert_eq!(r["user"]["data"], json!({"k": "v"}));
    assert_eq!(r["user"]["lastLogin"], Value::Null);
    assert_eq!(r["user"]["introReviewed"], false);
    assert_eq!(r["user"]["allDeviceTypesAvailable"], true);
    let uid = r["user"]["id"].as_i64().unwrap();

    let r = ws.ok("user/get", json!({"userId": uid}), &["user"]).await;
    assert_eq!(
        r["user"],
        json!({"id": uid, "login": "wsuser", "role": 1, "status": 0, "lastLogin": null, "data": {"k": "v"},
               "introReviewed": false, "allDeviceTypesAvailable": true, "networks": []})
    );
    let r = ws.ok("user/list", json!({"login": "wsuser"}), &["users"]).await;
    assert_eq!(
        r["users"],
        json!([{"id": uid, "login": "wsuser", "role": 1, "status": 0, "lastLogin": null, "data": {"k": "v"},
                "introReviewed": false, "allDeviceTypesAvailable": true}])
    );
    let r = ws.ok("user/count", json!({}), &["count"]).await;
    assert_eq!(r["count"], 2);
    let r = ws.ok("user/count", json!({"role": 1}), &["count"]).await;
    assert_eq!(r["count"], 1);

    ws.ok("user/update", json!({"userId": uid, "user": {"data": {"k": "w"}, "introReviewed": true}}), &[]).await;
    let r = ws.ok("user/get", json!({"userId": uid}), &["user"]).await;
    assert_eq!(r["user"]["data"], json!({"k": "w"}));
    assert_eq!(r["user"]["introReviewed"], true);

    // Network association, with the double nesting of `user/getNetwork`.
    ws.ok("user/assignNetwork", json!({"userId": uid, "networkId": 1}), &[]).await;
    let r = ws.ok("user/getNetwork", json!({"userId": uid, "networkId": 1}), &["network"]).await;
    assert_eq!(
        r["network"],
        json!({"network": {"id": 1, "name": "Sample Network", "description": "A DeviceHive Sample Network"}})
    );
    let r = ws.ok("user/get", json!({"userId": uid}), &["user"]).await;
    assert_eq!(
        r["user"]["networks"],
        json!([{"id": 1, "name": "Sample Network", "description": "A DeviceHive Sample Network"}])
    );
    ws.ok("user/unassignNetwork", json!({"userId": uid, "networkId": 1}), &[]).await;
    ws.err(
        "user/getNetwork",
        json!({"userId": uid, "networkId": 1}),
        404,
        &format!("Network with id 1 for user with id {uid} was not found"),
    )
    .await;
    ws.err("user/assignNetwork", json!({"userId": uid, "networkId": 9999}), 404, "Network with id = 9999 not found")
        .await;

    // Device types, with the double nesting of `user/getDeviceType`.
    let r = ws.ok("user/getDeviceTypes", json!({"userId": uid}), &["deviceTypes"]).await;
    assert_eq!(r["deviceTypes"].as_array().unwrap().len(), 8);
    assert_keys(&r["deviceTypes"][0], &["id", "name", "description"]);
    ws.err(
        "user/assignDeviceType",
        json!({"userId": uid, "deviceTypeId": 2}),
        403,
        "Cannot assign device type to user with all device types allowed",
    )
    .await;
    ws.ok("user/disallowAllDeviceTypes", json!({"userId": uid}), &[]).await;
    let r = ws.ok("user/getDeviceTypes", json!({"userId": uid}), &["deviceTypes"]).await;
    assert_eq!(r["deviceTypes"], json!([]));
    ws.ok("user/assignDeviceType", json!({"userId": uid, "deviceTypeId": 2}), &[]).await;
    let r = ws.ok("user/getDeviceType", json!({"userId": uid, "deviceTypeId": 2}), &["deviceType"]).await;
    assert_keys(&r["deviceType"], &["deviceType"]);
    assert_keys(&r["deviceType"]["deviceType"], &["id", "name", "description"]);
    assert_eq!(r["deviceType"]["deviceType"]["id"], 2);
    assert_eq!(r["deviceType"]["deviceType"]["name"], "Cameras");
    let r = ws.ok("user/getDeviceTypes", json!({"userId": uid}), &["deviceTypes"]).await;
    assert_eq!(ids_of_list(&r["deviceTypes"]), [2]);
    ws.err(
        "user/getDeviceType",
        json!({"userId": uid, "deviceTypeId": 3}),
        404,
        &format!("Device type with id 3 for user with id {uid} not found"),
    )
    .await;
    ws.ok("user/unassignDeviceType", json!({"userId": uid, "deviceTypeId": 2}), &[]).await;
    let r = ws.ok("user/getDeviceTypes", json!({"userId": uid}), &["deviceTypes"]).await;
    assert_eq!(r["deviceTypes"], json!([]));
    ws.ok("user/allowAllDeviceTypes", json!({"userId": uid}), &[]).await;
    let r = ws.ok("user/get", json!({"userId": uid}), &["user"]).await;
    assert_eq!(r["user"]["allDeviceTypesAvailable"], true);

    // Current user.
    let r = ws.ok("user/getCurrent", json!({}), &["current"]).await;
    assert_keys(
        &r["current"],
        &["id", "login", "role", "status", "lastLogin", "data", "introReviewed", "allDeviceTypesAvailable", "networks"],
    );
    assert_eq!(r["current"]["id"], 1);
    assert_eq!(r["current"]["login"], ADMIN_LOGIN);
    assert_ts(&r["current"]["lastLogin"]);
    ws.ok("user/updateCurrent", json!({"user": {"data": {"me": 1}}}), &[]).await;
    let r = ws.ok("user/getCurrent", json!({}), &["current"]).await;
    assert_eq!(r["current"]["data"], json!({"me": 1}));

    // A client: reads and updates itself, nothing else.
    let client = hub.login("wsuser", "secret-pass").await;
    let mut cws = Ws::authenticated(&hub, &client).await;
    let r = cws.ok("user/getCurrent", json!({}), &["current"]).await;
    assert_eq!(r["current"]["login"], "wsuser");
    cws.ok("user/updateCurrent", json!({"user": {"data": {"c": 2}}}), &[]).await;
    cws.err("user/updateCurrent", json!({"user": {"role": 0}}), 403, "Admin permissions required for this action")
        .await;
    cws.err("user/list", json!({}), 403, "Access is denied").await;
    cws.err("user/get", json!({"userId": uid}), 403, "Access is denied").await;
    cws.err(
        "user/insert",
        json!({"user": {"login": "x12", "password": "secret-pass", "role": 1}}),
        403,
        "Access is denied",
    )
    .await;
    cws.err("user/delete", json!({"userId": uid}), 403, "Access is denied").await;

    // Errors.
    for action in ["user/get", "user/delete", "user/getDeviceTypes", "user/allowAllDeviceTypes"] {
        ws.err(action, json!({}), 400, "User id is wrong or empty").await;
    }
    ws.err("user/update", json!({"user": {}}), 400, "User id is wrong or empty").await;
    ws.err("user/getNetwork", json!({"networkId": 1}), 400, "User id is wrong or empty").await;
    ws.err("user/getNetwork", json!({"userId": uid}), 400, "Network id is wrong or empty").await;
    ws.err("user/assignNetwork", json!({"userId": uid}), 400, "Network id is wrong or empty").await;
    ws.err("user/getDeviceType", json!({"userId": uid}), 400, "Device type id is wrong or empty").await;
    ws.err("user/assignDeviceType", json!({"userId": uid}), 400, "Device type id is wrong or empty").await;
    ws.err("user/insert", json!({}), 400, "User is required").await;
    ws.err("user/update", json!({"userId": uid}), 400, "User is required").await;
    ws.err("user/updateCurrent", json!({}), 400, "User is required").await;
    ws.err("user/get", json!({"userId": 9999}), 404, "User with id = 9999 not found").await;
    ws.err(
        "user/insert",
        json!({"user": {"login": "wsuser", "password": "secret-pass", "role": 1}}),
        403,
        "User with such login already exists. Please, select another one",
    )
    .await;
    ws.err(
        "user/insert",
        json!({"user": {"login": "wsuser2", "password": "short", "role": 1}}),
        400,
        "Password can contain only from 6 to 128 symbols!",
    )
    .await;
    ws.err(
        "user/delete",
        json!({"userId": 1}),
        403,
        "You can not delete a user or access key that you use to authenticate this request",
    )
    .await;

    ws.ok("user/delete", json!({"userId": uid}), &[]).await;
    ws.err("user/get", json!({"userId": uid}), 404, &format!("User with id = {uid} not found")).await;
    // The deleted user's session no longer works: its principal's user is gone.
    drop(cws);
}

// ------------------------------------------------------------------------------------------------
// Permissions: a client limited to network A.
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_permissions_per_action() {
    skip_unless_backend!();
    let hub = hub().await;
    let net_a = hub.network("perm-a").await;
    let net_b = hub.network("perm-b").await;
    hub.device("dev-a", net_a).await;
    hub.device("dev-b", net_b).await;
    let nb = rest_notification(&hub, "dev-b", json!({"notification": "nb"})).await["id"].as_i64().unwrap();
    let cb = rest_command(&hub, "dev-b", json!({"command": "cb"})).await["id"].as_i64().unwrap();
    let (_, client) = hub.client_user("perm-client", &[net_a]).await;
    let mut ws = Ws::authenticated(&hub, &client).await;
    let denied = "Access is denied";

    // Own network: allowed.
    let r = ws.ok("device/get", json!({"deviceId": "dev-a"}), &["device"]).await;
    assert_eq!(r["device"]["networkId"], net_a);
    let r = ws.ok("device/list", json!({}), &["devices"]).await;
    assert_eq!(r["devices"].as_array().unwrap().len(), 1);
    assert_eq!(r["devices"][0]["id"], "dev-a");
    let r = ws.ok("device/count", json!({}), &["count"]).await;
    assert_eq!(r["count"], 1);
    let na = ws
        .ok(
            "notification/insert",
            json!({"deviceId": "dev-a", "notification": {"notification": "na"}}),
            &["notification"],
        )
        .await["notification"]["id"]
        .as_i64()
        .unwrap();
    ws.ok("notification/get", json!({"deviceId": "dev-a", "notificationId": na}), &["notification"]).await;
    ws.ok("notification/list", json!({"deviceId": "dev-a"}), &["notifications"]).await;
    let r = ws.ok("command/insert", json!({"deviceId": "dev-a", "command": {"command": "ca"}}), &["command"]).await;
    let ca = r["command"]["id"].as_i64().unwrap();
    assert!(r["command"]["userId"].as_i64().unwrap() > 1, "{r}");
    ws.ok("command/get", json!({"deviceId": "dev-a", "commandId": ca}), &["command"]).await;
    ws.ok("command/list", json!({"deviceId": "dev-a"}), &["commands"]).await;
    ws.ok("command/update", json!({"deviceId": "dev-a", "commandId": ca, "command": {"status": "ok"}}), &[]).await;
    ws.subscribe("notification/subscribe", json!({"deviceId": "dev-a"})).await;
    ws.subscribe("notification/subscribe", json!({"networkIds": [net_a]})).await;
    ws.subscribe("command/subscribe", json!({"deviceId": "dev-a"})).await;
    ws.subscribe("command/subscribe", json!({"networkIds": [net_a]})).await;

    // Network B: 403 everywhere.
    ws.err("device/get", json!({"deviceId": "dev-b"}), 403, denied).await;
    ws.err("device/delete", json!({"deviceId": "dev-b"}), 403, denied).await;
    ws.err("notification/insert", json!({"deviceId": "dev-b", "notification": {"notification": "x"}}), 403, denied)
        .await;
    ws.err("notification/get", json!({"deviceId": "dev-b", "notificationId": nb}), 403, denied).await;
    ws.err("notification/list", json!({"deviceId": "dev-b"}), 403, denied).await;
    ws.err("command/insert", json!({"deviceId": "dev-b", "command": {"command": "x"}}), 403, denied).await;
    ws.err("command/get", json!({"deviceId": "dev-b", "commandId": cb}), 403, denied).await;
    ws.err("command/list", json!({"deviceId": "dev-b"}), 403, denied).await;
    ws.err(
        "command/update",
        json!({"deviceId": "dev-b", "commandId": cb, "command": {"status": "hacked"}}),
        403,
        denied,
    )
    .await;
    for action in ["notification/subscribe", "command/subscribe"] {
        ws.err(action, json!({"deviceId": "dev-b"}), 403, denied).await;
        ws.err(action, json!({"networkIds": [net_b]}), 403, denied).await;
        ws.err(action, json!({"networkIds": [net_a, net_b]}), 403, denied).await;
        ws.err(action, json!({"networkIds": [9999]}), 403, denied).await;
        ws.err(action, json!({"deviceTypeIds": [9999]}), 403, denied).await;
        // Unknown devices are 403 for restricted principals.
        ws.err(action, json!({"deviceId": "nope"}), 403, denied).await;
        ws.err(action, json!({"deviceId": ""}), 400, "Device id is wrong or empty").await;
    }
    // Unknown devices: 403 for the device-target actions ...
    ws.err("device/get", json!({"deviceId": "nope"}), 403, denied).await;
    ws.err("command/get", json!({"deviceId": "nope", "commandId": 1}), 403, denied).await;
    ws.err("command/list", json!({"deviceId": "nope"}), 403, denied).await;
    ws.err("notification/insert", json!({"deviceId": "nope", "notification": {"notification": "x"}}), 403, denied)
        .await;
    // ... but 404 for notification/get|list (null target, then existence; §12.3 note 2).
    ws.err(
        "notification/get",
        json!({"deviceId": "nope", "notificationId": 1}),
        404,
        "Device with such deviceId = nope not found",
    )
    .await;
    ws.err("notification/list", json!({"deviceId": "nope"}), 404, "Device with such deviceId = nope not found").await;
    // Special notification names are forbidden over WebSocket too.
    for special in ["$device-add", "$device-update"] {
        ws.err(
            "notification/insert",
            json!({"deviceId": "dev-a", "notification": {"notification": special}}),
            403,
            "It's forbidden to insert these special notifications: $device-update, $device-add.",
        )
        .await;
    }
    // Registering into a foreign network.
    ws.err(
        "device/save",
        json!({"deviceId": "dev-c", "device": {"name": "c", "networkId": net_b}}),
        403,
        "No access to network!",
    )
    .await;
    ws.err("device/save", json!({"deviceId": "dev-b", "device": {"name": "mine now"}}), 403, "No access to device")
        .await;
    // Nothing in network B changed.
    let b = hub.get(&hub.admin, "/device/dev-b").await.expect(200);
    assert_eq!(b["name"], "dev-b");
    let c = hub.get(&hub.admin, &format!("/device/dev-b/command/{cb}")).await.expect(200);
    assert_eq!(c["status"], Value::Null);

    // Admin: 404 for unknown devices, networks and device types when subscribing.
    let mut admin = Ws::authenticated(&hub, &hub.admin).await;
    for action in ["notification/subscribe", "command/subscribe"] {
        admin.err(action, json!({"deviceId": "nope"}), 404, "Device with such deviceId = nope not found").await;
        admin
            .err(
                action,
                json!({"networkIds": [9999, net_a, 9998]}),
                404,
                "Networks with such networkIds wasn't found: {[9999, 9998]}",
            )
            .await;
        admin
            .err(
                action,
                json!({"deviceTypeIds": [9999]}),
                404,
                "Device types with such deviceTypeIds wasn't found: {[9999]}",
            )
            .await;
        // Existing ones are fine.
        admin.subscribe(action, json!({"deviceId": "dev-b", "networkIds": [net_b]})).await;
    }

    // A client without networks cannot subscribe at all.
    let (_, lonely) = hub.client_user("perm-lonely", &[]).await;
    let mut lws = Ws::authenticated(&hub, &lonely).await;
    for action in ["notification/subscribe", "command/subscribe"] {
        lws.err(action, json!({}), 403, "No access to any device type or network").await;
    }

    // A token without GetDeviceNotification/GetDeviceCommand cannot subscribe or list subscriptions.
    let limited = hub
        .post(
            &hub.admin,
            "/token/create",
            json!({"userId": 1, "actions": ["GetNetwork"], "networkIds": ["*"], "deviceTypeIds": ["*"]}),
        )
        .await
        .expect(201)["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    let mut lim = Ws::authenticated(&hub, &limited).await;
    lim.err("notification/subscribe", json!({}), 403, denied).await;
    lim.err("command/subscribe", json!({}), 403, denied).await;
    lim.err("subscription/list", json!({}), 403, denied).await;
    lim.err("notification/unsubscribe", json!({}), 403, denied).await;
    lim.err("command/unsubscribe", json!({}), 403, denied).await;

    // A token with only GetDeviceNotification lists only notification subscriptions.
    let notif_only = hub
        .post(
            &hub.admin,
            "/token/create",
            json!({"userId": 1, "actions": ["GetDeviceNotification"], "networkIds": ["*"], "deviceTypeIds": ["*"]}),
        )
        .await
        .expect(201)["accessToken"]
        .as_str()
        .unwrap()
        .to_string();
    let mut nws = Ws::authenticated(&hub, &notif_only).await;
    let sid = nws.subscribe("notification/subscribe", json!({})).await;
    nws.err("command/subscribe", json!({}), 403, denied).await;
    let r = nws.ok("subscription/list", json!({}), &["subscriptions"]).await;
    assert_eq!(r["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(r["subscriptions"][0]["subscriptionId"], sid);
}

// ------------------------------------------------------------------------------------------------
// Subscriptions (§11, §12.3, §12.4).
// ------------------------------------------------------------------------------------------------

/// Next push for subscription `sub`, with its shape checked.
fn check_push(p: &Value, action: &str, sub: u64) {
    let key = if action.starts_with("notification") { "notification" } else { "command" };
    assert_keys(p, &["action", "subscriptionId", key]);
    assert_eq!(p["action"], action, "{p}");
    assert_eq!(p["subscriptionId"], sub, "{p}");
    let keys: &[&str] = if key == "notification" { &NOTIFICATION_KEYS } else { &COMMAND_KEYS };
    assert_keys(&p[key], keys);
}

/// Receives exactly the messages named `expected` (device, name) as pushes of `sub`, then nothing.
async fn expect_pushes(ws: &mut Ws, action: &str, sub: u64, expected: &[(&str, &str)]) {
    let key = if action.starts_with("notification") { "notification" } else { "command" };
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let p = ws.push().await;
        check_push(&p, action, sub);
        got.push((p[key]["deviceId"].as_str().unwrap().to_string(), p[key][key].as_str().unwrap().to_string()));
    }
    let want: Vec<(String, String)> = expected.iter().map(|(d, n)| (d.to_string(), n.to_string())).collect();
    assert_eq!(got, want, "pushes of {sub}");
    ws.quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn subscription_filters() {
    skip_unless_backend!();
    let hub = hub().await;
    let net_a = hub.network("filter-a").await;
    let net_b = hub.network("filter-b").await;
    device_with_type(&hub, "fa1", net_a, 1).await;
    device_with_type(&hub, "fa2", net_a, 2).await;
    device_with_type(&hub, "fb1", net_b, 1).await;
    let admin = hub.admin.clone();

    for (sub_action, push_action) in
        [("notification/subscribe", "notification/insert"), ("command/subscribe", "command/insert")]
    {
        let filters = [
            json!({"deviceId": "fa1"}),
            json!({"networkIds": [net_a]}),
            json!({"deviceTypeIds": [2]}),
            json!({"names": ["alarm"]}),
            json!({"networkIds": [net_a, net_b], "names": ["temp"], "deviceTypeIds": [1]}),
            json!({"deviceId": "fb1", "networkIds": [net_a]}),
            json!({}),
        ];
        let mut sessions = Vec::new();
        for f in filters {
            let mut ws = Ws::authenticated(&hub, &admin).await;
            let sub = ws.subscribe(sub_action, f).await;
            sessions.push((ws, sub));
        }
        let events = [("fa1", "temp"), ("fa2", "temp"), ("fb1", "alarm"), ("fa1", "alarm")];
        for (device, name) in events {
            if push_action == "notification/insert" {
                rest_notification(&hub, device, json!({"notification": name})).await;
            } else {
                rest_command(&hub, device, json!({"command": name})).await;
            }
        }
        let expected: [&[(&str, &str)]; 7] = [
            &[("fa1", "temp"), ("fa1", "alarm")],
            &[("fa1", "temp"), ("fa2", "temp"), ("fa1", "alarm")],
            &[("fa2", "temp")],
            &[("fb1", "alarm"), ("fa1", "alarm")],
            &[("fa1", "temp")],
            // deviceId wins over networkIds.
            &[("fb1", "alarm")],
            &events,
        ];
        for ((ws, sub), want) in sessions.iter_mut().zip(expected) {
            expect_pushes(ws, push_action, *sub, want).await;
        }
    }
}

#[tokio::test]
async fn return_updated_commands_and_multiple_subscriptions_per_session() {
    skip_unless_backend!();
    let hub = hub().await;
    hub.device("ru-1", 1).await;
    hub.device("ru-2", 1).await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let inserts = ws.subscribe("command/subscribe", json!({"deviceId": "ru-1"})).await;
    let updates = ws.subscribe("command/subscribe", json!({"deviceId": "ru-1", "returnUpdatedCommands": true})).await;
    let updates_all = ws
        .subscribe("command/subscribe", json!({"networkIds": [1], "returnUpdatedCommands": "true", "names": ["go"]}))
        .await;
    assert!(inserts != updates && updates != updates_all);

    let c = rest_command(&hub, "ru-1", json!({"command": "go"})).await;
    let id = c["id"].as_i64().unwrap();
    let p = ws.push().await;
    check_push(&p, "command/insert", inserts);
    assert_eq!(p["command"]["id"], id);
    assert_eq!(p["command"]["status"], Value::Null);
    ws.quiet(Duration::from_millis(200)).await;

    // Each update is pushed as command/update, once per matching subscription.
    for (i, status) in ["working", "done"].iter().enumerate() {
        hub.put(&hub.admin, &format!("/device/ru-1/command/{id}"), json!({"status": status, "result": {"step": i}}))
            .await
            .expect(204);
        let mut got = ws.pushes(2).await;
        got.sort_by_key(|p| p["subscriptionId"].as_u64().unwrap());
        let mut subs = [updates, updates_all];
        subs.sort_unstable();
        for (p, sub) in got.iter().zip(subs) {
            check_push(p, "command/update", sub);
            assert_eq!(p["command"]["id"], id);
            assert_eq!(p["command"]["status"], *status);
            assert_eq!(p["command"]["result"], json!({"step": i}));
            assert!(p["command"]["lastUpdated"].as_str() >= p["command"]["timestamp"].as_str());
        }
        ws.quiet(Duration::from_millis(200)).await;
    }

    // Update of a command of another device in the network: only the network subscription.
    let c2 = rest_command(&hub, "ru-2", json!({"command": "go"})).await;
    ws.quiet(Duration::from_millis(200)).await;
    ws.ok("command/update", json!({"deviceId": "ru-2", "commandId": c2["id"], "command": {"status": "s"}}), &[]).await;
    let p = ws.push().await;
    check_push(&p, "command/update", updates_all);
    assert_eq!(p["command"]["deviceId"], "ru-2");
    ws.quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn timestamp_replay() {
    skip_unless_backend!();
    let hub = hub().await;
    hub.device("rp-1", 1).await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;

    // Notifications: strictly after the timestamp, ascending, after the response, then live.
    let mut inserted = Vec::new();
    for i in 0..4 {
        let r = rest_notification(&hub, "rp-1", json!({"notification": "r", "parameters": {"i": i}})).await;
        inserted.push(r);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // One in the far past that the replay must skip, one older than the cursor.
    rest_notification(&hub, "rp-1", json!({"notification": "r", "timestamp": "2001-01-01T00:00:00"})).await;
    ws.send_text(
        &json!({"action": "notification/subscribe", "requestId": "sub-1", "deviceId": "rp-1",
                "names": ["r"], "timestamp": inserted[0]["timestamp"]})
        .to_string(),
    )
    .await;
    let r = ws.recv().await;
    assert_eq!(r["requestId"], "sub-1", "the response comes before the replay: {r}");
    assert_keys(&r, &["action", "requestId", "status", "subscriptionId"]);
    let sub = r["subscriptionId"].as_u64().unwrap();
    let replay = ws.pushes(3).await;
    for p in &replay {
        check_push(p, "notification/insert", sub);
    }
    let want: Vec<i64> = inserted[1..].iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids_of(&replay, "notification"), want);
    ws.quiet(Duration::from_millis(200)).await;
    let live = rest_notification(&hub, "rp-1", json!({"notification": "r"})).await;
    let p = ws.push().await;
    check_push(&p, "notification/insert", sub);
    assert_eq!(p["notification"]["id"], live["id"]);
    ws.quiet(Duration::from_millis(200)).await;

    // A timestamp in epoch milliseconds works too and replays everything after it.
    let sub2 = ws
        .subscribe(
            "notification/subscribe",
            json!({"deviceId": "rp-1", "names": ["r"], "timestamp": now_ms() - 3_600_000}),
        )
        .await;
    let replay = ws.pushes(5).await;
    for p in &replay {
        check_push(p, "notification/insert", sub2);
    }
    let mut want: Vec<i64> = inserted.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    want.push(live["id"].as_i64().unwrap());
    assert_eq!(ids_of(&replay, "notification"), want);
    ws.quiet(Duration::from_millis(200)).await;
    ws.ok("notification/unsubscribe", json!({}), &[]).await;

    // Commands: `limit` caps the replay (oldest first); default limit is 20.
    hub.device("rp-2", 1).await;
    let mut cmd_ids = Vec::new();
    for i in 0..25 {
        let r =
            rest_command(&hub, "rp-2", json!({"command": "c", "timestamp": format!("2030-01-01T00:00:{i:02}.000")}))
                .await;
        cmd_ids.push(r["id"].as_i64().unwrap());
    }
    let sub3 = ws
        .subscribe("command/subscribe", json!({"deviceId": "rp-2", "timestamp": "2030-01-01T00:00:00.000", "limit": 3}))
        .await;
    let replay = ws.pushes(3).await;
    for p in &replay {
        check_push(p, "command/insert", sub3);
    }
    assert_eq!(ids_of(&replay, "command"), cmd_ids[1..4]);
    ws.quiet(Duration::from_millis(200)).await;
    let sub4 = ws.subscribe("command/subscribe", json!({"deviceId": "rp-2", "timestamp": "2029-12-31T23:59:59"})).await;
    let replay = ws.pushes(20).await;
    for p in &replay {
        check_push(p, "command/insert", sub4);
    }
    assert_eq!(ids_of(&replay, "command"), cmd_ids[..20]);
    ws.quiet(Duration::from_millis(200)).await;
    ws.ok("command/unsubscribe", json!({}), &[]).await;

    // returnUpdatedCommands replays updated commands by lastUpdated.
    let before = now_ms() - 1;
    for i in [7usize, 2, 11] {
        tokio::time::sleep(Duration::from_millis(3)).await;
        hub.put(&hub.admin, &format!("/device/rp-2/command/{}", cmd_ids[i]), json!({"status": format!("s{i}")}))
            .await
            .expect(204);
    }
    let sub5 = ws
        .subscribe("command/subscribe", json!({"deviceId": "rp-2", "timestamp": before, "returnUpdatedCommands": true}))
        .await;
    let replay = ws.pushes(3).await;
    for p in &replay {
        check_push(p, "command/update", sub5);
    }
    assert_eq!(ids_of(&replay, "command"), [cmd_ids[7], cmd_ids[2], cmd_ids[11]]);
    ws.quiet(Duration::from_millis(200)).await;

    // An unparseable timestamp is refused.
    ws.err("notification/subscribe", json!({"timestamp": "yesterday"}), 400, "Unparseable timestamp").await;
}

#[tokio::test]
async fn subscriptions_receive_devices_registered_later() {
    skip_unless_backend!();
    let hub = hub().await;
    let net_a = hub.network("later-a").await;
    let net_b = hub.network("later-b").await;
    let (_, client) = hub.client_user("later-client", &[net_a]).await;

    let mut admin = Ws::authenticated(&hub, &hub.admin).await;
    let by_net = admin.subscribe("notification/subscribe", json!({"networkIds": [net_a]})).await;
    let mut all_ws = Ws::authenticated(&hub, &hub.admin).await;
    let all = all_ws.subscribe("notification/subscribe", json!({})).await;
    let mut other_ws = Ws::authenticated(&hub, &hub.admin).await;
    other_ws.subscribe("notification/subscribe", json!({"networkIds": [net_b]})).await;
    let mut cws = Ws::authenticated(&hub, &client).await;
    let implicit = cws.subscribe("notification/subscribe", json!({})).await;
    let cmd = cws.subscribe("command/subscribe", json!({})).await;

    // Register through WebSocket: `$device-add` with the full device.
    let mut writer = Ws::authenticated(&hub, &hub.admin).await;
    writer
        .ok(
            "device/save",
            json!({"deviceId": "late-1", "device": {"name": "Late", "networkId": net_a, "data": {"v": 1}}}),
            &[],
        )
        .await;
    let device = json!({"id": "late-1", "name": "Late", "data": {"v": 1}, "networkId": net_a, "deviceTypeId": 1, "isBlocked": false});
    for (ws, sub) in [(&mut admin, by_net), (&mut all_ws, all), (&mut cws, implicit)] {
        let p = ws.push().await;
        check_push(&p, "notification/insert", sub);
        assert_eq!(p["notification"]["notification"], "$device-add");
        assert_eq!(p["notification"]["deviceId"], "late-1");
        assert_eq!(p["notification"]["networkId"], net_a);
        assert_eq!(p["notification"]["deviceTypeId"], 1);
        assert_eq!(p["notification"]["parameters"], device);
    }
    // `$device-update` carries only what changed (§18), an empty object when nothing did.
    writer.ok("device/save", json!({"deviceId": "late-1", "device": {"name": "Renamed", "data": {"v": 1}}}), &[]).await;
    writer.ok("device/save", json!({"deviceId": "late-1", "device": {"data": {"v": 1}}}), &[]).await;
    for (ws, sub) in [(&mut admin, by_net), (&mut all_ws, all), (&mut cws, implicit)] {
        let ps = ws.pushes(2).await;
        for p in &ps {
            check_push(p, "notification/insert", sub);
            assert_eq!(p["notification"]["notification"], "$device-update");
            assert_eq!(p["notification"]["networkId"], net_a);
        }
        assert_eq!(ps[0]["notification"]["parameters"], json!({"name": "Renamed"}));
        assert_eq!(ps[1]["notification"]["parameters"], json!({}));
    }

    // Ordinary messages of the new device reach the same subscriptions.
    let n = rest_notification(&hub, "late-1", json!({"notification": "hello"})).await;
    for (ws, sub) in [(&mut admin, by_net), (&mut all_ws, all), (&mut cws, implicit)] {
        let p = ws.push().await;
        check_push(&p, "notification/insert", sub);
        assert_eq!(p["notification"]["id"], n["id"]);
    }
    let c = rest_command(&hub, "late-1", json!({"command": "blink"})).await;
    let p = cws.push().await;
    check_push(&p, "command/insert", cmd);
    assert_eq!(p["command"]["id"], c["id"]);

    // A device registered in network B reaches only the B and unfiltered subscriptions.
    hub.device("late-b", net_b).await;
    let p = other_ws.push().await;
    assert_eq!(p["notification"]["notification"], "$device-add");
    assert_eq!(p["notification"]["deviceId"], "late-b");
    let p = all_ws.push().await;
    assert_eq!(p["notification"]["deviceId"], "late-b");
    for ws in [&mut admin, &mut cws, &mut other_ws, &mut all_ws] {
        ws.quiet(Duration::from_millis(300)).await;
    }

    // Moving the device to network B: the update is routed by the device's new network.
    writer
        .ok("device/save", json!({"deviceId": "late-1", "device": {"networkId": net_b, "data": {"v": 1}}}), &[])
        .await;
    let p = other_ws.push().await;
    assert_eq!(p["notification"]["notification"], "$device-update");
    assert_eq!(p["notification"]["parameters"], json!({"networkId": net_b}));
    let p = all_ws.push().await;
    assert_eq!(p["notification"]["parameters"], json!({"networkId": net_b}));
    for ws in [&mut admin, &mut cws, &mut other_ws, &mut all_ws] {
        ws.quiet(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn unsubscribe_list_and_close() {
    skip_unless_backend!();
    let hub = hub().await;
    hub.device("us-1", 1).await;
    let base = live_subscriptions(&hub).await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;

    let n1 = ws.subscribe("notification/subscribe", json!({"deviceId": "us-1"})).await;
    let n2 = ws
        .subscribe(
            "notification/subscribe",
            json!({"networkIds": [1], "deviceTypeIds": ["1"], "names": ["a", "b"], "timestamp": "2030-01-01T00:00:00Z"}),
        )
        .await;
    let c1 = ws.subscribe("command/subscribe", json!({"deviceId": "us-1", "names": ["x"]})).await;
    let c2 =
        ws.subscribe("command/subscribe", json!({"returnUpdatedCommands": true, "timestamp": 1893456000000_i64})).await;
    assert_eq!([n1, n2, c1, c2].iter().collect::<HashSet<_>>().len(), 4, "subscription ids are unique");
    for id in [n1, n2, c1, c2] {
        assert!(id < (1u64 << 53), "subscriptionId fits a JS number: {id}");
    }
    assert_eq!(live_subscriptions(&hub).await, base + 4);

    let info = |id: u64, kind: &str, device: Value, nets: Value, types: Value, names: Value, ts: Value| {
        json!({"subscriptionId": id, "type": kind, "deviceId": device, "networkIds": nets,
               "deviceTypeIds": types, "names": names, "timestamp": ts})
    };
    let i_n1 = info(n1, "notification", json!("us-1"), Value::Null, Value::Null, Value::Null, Value::Null);
    let i_n2 = info(
        n2,
        "notification",
        Value::Null,
        json!([1]),
        json!([1]),
        json!(["a", "b"]),
        json!("2030-01-01T00:00:00.000"),
    );
    let i_c1 = info(c1, "command", json!("us-1"), Value::Null, Value::Null, json!(["x"]), Value::Null);
    let i_c2 =
        info(c2, "command", Value::Null, Value::Null, Value::Null, Value::Null, json!("2030-01-01T00:00:00.000"));
    let sorted = |v: &Value| {
        let mut l = v.as_array().unwrap().clone();
        for s in &l {
            assert_keys(s, &SUBSCRIPTION_KEYS);
        }
        l.sort_by_key(|s| s["subscriptionId"].as_u64().unwrap());
        l
    };
    let r = ws.ok("subscription/list", json!({}), &["subscriptions"]).await;
    assert_eq!(sorted(&r["subscriptions"]), [i_n1.clone(), i_n2.clone(), i_c1.clone(), i_c2.clone()]);
    let r = ws.ok("subscription/list", json!({"type": "command"}), &["subscriptions"]).await;
    assert_eq!(sorted(&r["subscriptions"]), [i_c1.clone(), i_c2.clone()]);
    let r = ws.ok("subscription/list", json!({"type": "notification"}), &["subscriptions"]).await;
    assert_eq!(sorted(&r["subscriptions"]), [i_n1.clone(), i_n2.clone()]);
    // Another session sees only its own subscriptions.
    let mut other = Ws::authenticated(&hub, &hub.admin).await;
    let r = other.ok("subscription/list", json!({}), &["subscriptions"]).await;
    assert_eq!(r["subscriptions"], json!([]));
    other
        .err(
            "notification/unsubscribe",
            json!({"subscriptionId": n1}),
            404,
            &format!("Subscription with id {n1} was not found"),
        )
        .await;

    // Both notification subscriptions match an "a" notification on us-1.
    let a = rest_notification(&hub, "us-1", json!({"notification": "a"})).await;
    let mut got: Vec<u64> = ws
        .pushes(2)
        .await
        .iter()
        .map(|p| {
            assert_eq!(p["notification"]["id"], a["id"]);
            p["subscriptionId"].as_u64().unwrap()
        })
        .collect();
    got.sort_unstable();
    let mut want = vec![n1, n2];
    want.sort_unstable();
    assert_eq!(got, want);

    // Unsubscribe by id (a digit string works) stops that subscription only.
    ws.ok("notification/unsubscribe", json!({"subscriptionId": n1.to_string()}), &[]).await;
    rest_notification(&hub, "us-1", json!({"notification": "a"})).await;
    let p = ws.push().await;
    assert_eq!(p["subscriptionId"], n2);
    ws.quiet(Duration::from_millis(300)).await;
    assert_eq!(live_subscriptions(&hub).await, base + 3);
    ws.err(
        "notification/unsubscribe",
        json!({"subscriptionId": n1}),
        404,
        &format!("Subscription with id {n1} was not found"),
    )
    .await;
    // The wrong type is not found either.
    ws.err(
        "notification/unsubscribe",
        json!({"subscriptionId": c1}),
        404,
        &format!("Subscription with id {c1} was not found"),
    )
    .await;
    ws.err(
        "command/unsubscribe",
        json!({"subscriptionId": n2}),
        404,
        &format!("Subscription with id {n2} was not found"),
    )
    .await;
    ws.err("command/unsubscribe", json!({"subscriptionId": 12345}), 404, "Subscription with id 12345 was not found")
        .await;

    // Unsubscribe without id removes every subscription of that type.
    ws.ok("command/unsubscribe", json!({}), &[]).await;
    let r = ws.ok("subscription/list", json!({}), &["subscriptions"]).await;
    assert_eq!(sorted(&r["subscriptions"]), std::slice::from_ref(&i_n2));
    assert_eq!(live_subscriptions(&hub).await, base + 1);
    let c = rest_command(&hub, "us-1", json!({"command": "x"})).await;
    hub.put(&hub.admin, &format!("/device/us-1/command/{}", c["id"]), json!({"status": "done"})).await.expect(204);
    ws.quiet(Duration::from_millis(300)).await;
    ws.ok("notification/unsubscribe", json!({}), &[]).await;
    let r = ws.ok("subscription/list", json!({}), &["subscriptions"]).await;
    assert_eq!(r["subscriptions"], json!([]));
    assert_eq!(live_subscriptions(&hub).await, base);
    // Unsubscribing everything again is fine.
    ws.ok("notification/unsubscribe", json!({}), &[]).await;

    // Closing the socket (or dropping the connection) removes its subscriptions.
    for _ in 0..3 {
        ws.subscribe("notification/subscribe", json!({})).await;
    }
    ws.subscribe("command/subscribe", json!({})).await;
    assert_eq!(live_subscriptions(&hub).await, base + 4);
    ws.close().await;
    wait_live_subscriptions(&hub, base, 5).await;
    other.subscribe("notification/subscribe", json!({})).await;
    assert_eq!(live_subscriptions(&hub).await, base + 1);
    drop(other);
    wait_live_subscriptions(&hub, base, 5).await;
}

// ------------------------------------------------------------------------------------------------
// Replay + live under concurrent writes, cross-transport wake-ups.
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_with_concurrent_inserts_has_no_gap_and_no_duplicate() {
    skip_unless_backend!();
    let hub = hub().await;
    for round in 0..3 {
        let device = format!("rl-{round}");
        hub.device(&device, 1).await;
        let since = json!(now_ms() - 1000);
        const TASKS: usize = 3;
        const PER_TASK: usize = 60;
        let inserted = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let client = hub.client.clone();
            let url = hub.url(&format!("/device/{device}/notification"));
            let token = hub.admin.clone();
            let inserted = inserted.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..PER_TASK {
                    let r = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"notification": "tick"}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 201);
                    let body: Value = r.json().await.unwrap();
                    ids.push(body["id"].as_i64().unwrap());
                    inserted.fetch_add(1, Ordering::SeqCst);
                    // Continuous, but slow enough that a loaded machine stays under the replay cap.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                ids
            }));
        }
        // Subscribe in the middle of the stream (well below the 100-message replay cap).
        while inserted.load(Ordering::SeqCst) < 20 + round * 10 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut ws = Ws::authenticated(&hub, &hub.admin).await;
        ws.send_text(
            &json!({"action": "notification/subscribe", "requestId": "s", "deviceId": device,
                    "names": ["tick"], "timestamp": since})
            .to_string(),
        )
        .await;
        let at_subscribe = inserted.load(Ordering::SeqCst);
        let r = ws.recv().await;
        assert_eq!(r["requestId"], "s", "the subscribe response comes first: {r}");
        assert_eq!(r["status"], "success", "{r}");
        let sub = r["subscriptionId"].as_u64().unwrap();
        assert!(at_subscribe < 100, "too many messages before subscribing: {at_subscribe}");

        let mut all: HashSet<i64> = HashSet::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        assert_eq!(all.len(), TASKS * PER_TASK);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.iter().collect::<HashSet<_>>().len() < all.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(p) = ws.recv_within(left).await else {
                let seen: HashSet<i64> = got.iter().copied().collect();
                let missing: Vec<_> = all.difference(&seen).collect();
                panic!("round {round}: {} of {} arrived; missing {missing:?}", seen.len(), all.len());
            };
            check_push(&p, "notification/insert", sub);
            got.push(p["notification"]["id"].as_i64().unwrap());
        }
        ws.quiet(Duration::from_millis(200)).await;
        let unique: HashSet<i64> = got.iter().copied().collect();
        assert_eq!(got.len(), unique.len(), "round {round}: duplicates in {got:?}");
        assert_eq!(unique, all, "round {round}: foreign ids");
        // Replay ascending, then live in commit order: ids never go backwards.
        assert!(got.windows(2).all(|w| w[0] < w[1]), "round {round}: out of order: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_transport_wake_ups() {
    skip_unless_backend!();
    let hub = Arc::new(hub().await);
    hub.device("xt-1", 1).await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let sub = ws.subscribe("notification/subscribe", json!({"deviceId": "xt-1"})).await;

    // REST insert → WS push.
    let n = rest_notification(&hub, "xt-1", json!({"notification": "from-rest", "parameters": {"p": 1}})).await;
    let p = ws.push().await;
    check_push(&p, "notification/insert", sub);
    assert_eq!(p["notification"]["id"], n["id"]);
    assert_eq!(p["notification"]["timestamp"], n["timestamp"]);
    assert_eq!(p["notification"]["parameters"], json!({"p": 1}));

    let spawn_get = |path: String| {
        let hub = hub.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = hub.get(&hub.admin, &path).await;
            (r.status.as_u16(), r.body, started.elapsed())
        })
    };

    // WS command/insert → REST long polls (single device and pollMany) wake.
    let base = live_subscriptions(&hub).await;
    let single = spawn_get("/device/xt-1/command/poll?waitTimeout=30".into());
    let many = spawn_get("/device/command/poll?networkIds=1&names=wake&waitTimeout=30".into());
    wait_live_subscriptions(&hub, base + 2, 10).await;
    let r = ws
        .ok(
            "command/insert",
            json!({"deviceId": "xt-1", "command": {"command": "wake", "parameters": {"x": 1}}}),
            &["command"],
        )
        .await;
    let cid = r["command"]["id"].as_i64().unwrap();
    for task in [single, many] {
        let (status, body, took) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(took < Duration::from_secs(10), "poll woke late: {took:?}");
        let list = body.as_array().unwrap();
        assert_eq!(list.len(), 1, "{body}");
        assert_keys(&list[0], &COMMAND_KEYS);
        assert_eq!(list[0]["id"], cid);
        assert_eq!(list[0]["command"], "wake");
        assert_eq!(list[0]["userId"], 1);
    }

    // WS notification/insert → REST notification poll wakes.
    let base = live_subscriptions(&hub).await;
    let npoll = spawn_get("/device/xt-1/notification/poll?waitTimeout=30".into());
    wait_live_subscriptions(&hub, base + 1, 10).await;
    let r = ws
        .ok(
            "notification/insert",
            json!({"deviceId": "xt-1", "notification": {"notification": "from-ws"}}),
            &["notification"],
        )
        .await;
    let (status, body, _) = npoll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body[0]["id"], r["notification"]["id"]);
    assert_eq!(body[0]["notification"], "from-ws");
    // ... and the WS subscriber got it too.
    let p = ws.push().await;
    assert_eq!(p["notification"]["id"], r["notification"]["id"]);

    // WS command/update → REST command wait and updated-commands poll wake.
    let base = live_subscriptions(&hub).await;
    let wait = spawn_get(format!("/device/xt-1/command/{cid}/poll?waitTimeout=30"));
    let updated_poll = spawn_get("/device/xt-1/command/poll?returnUpdatedCommands=true&waitTimeout=30".into());
    wait_live_subscriptions(&hub, base + 2, 10).await;
    ws.ok(
        "command/update",
        json!({"deviceId": "xt-1", "commandId": cid, "command": {"status": "done", "result": {"r": 2}}}),
        &[],
    )
    .await;
    let (status, body, took) = wait.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_secs(10));
    assert_keys(&body, &COMMAND_KEYS);
    assert_eq!(body["id"], cid);
    assert_eq!(body["status"], "done");
    assert_eq!(body["result"], json!({"r": 2}));
    let (status, body, _) = updated_poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body[0]["id"], cid);
    assert_eq!(body[0]["status"], "done");
    // The pollers are gone again.
    wait_live_subscriptions(&hub, base, 5).await;

    // REST command update → WS command/update push; REST command insert → WS command/insert push.
    let upd = ws.subscribe("command/subscribe", json!({"deviceId": "xt-1", "returnUpdatedCommands": true})).await;
    let ins = ws.subscribe("command/subscribe", json!({"deviceId": "xt-1"})).await;
    let c = rest_command(&hub, "xt-1", json!({"command": "rest"})).await;
    let p = ws.push().await;
    check_push(&p, "command/insert", ins);
    assert_eq!(p["command"]["id"], c["id"]);
    hub.put(&hub.admin, &format!("/device/xt-1/command/{}", c["id"]), json!({"status": "ack"})).await.expect(204);
    let p = ws.push().await;
    check_push(&p, "command/update", upd);
    assert_eq!(p["command"]["status"], "ack");
    ws.quiet(Duration::from_millis(200)).await;
}

// ------------------------------------------------------------------------------------------------
// Limits: backpressure, subscription count, message size; many sessions.
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_while_others_keep_up() {
    skip_unless_backend!();
    let hub = Arc::new(hub_with(|s| s.websocket.queue_capacity = 16).await);
    hub.device("bp-1", 1).await;
    let base = live_subscriptions(&hub).await;

    // The slow client: subscribes, then its stream is never polled again.
    let (mut slow, _) = tokio_tungstenite::connect_async(ws_url(&hub)).await.unwrap();
    for req in [
        json!({"action": "authenticate", "requestId": 1, "token": hub.admin}),
        json!({"action": "notification/subscribe", "requestId": 2, "deviceId": "bp-1"}),
    ] {
        slow.send(Message::Text(req.to_string().into())).await.unwrap();
        let Some(Ok(Message::Text(t))) = slow.next().await else { panic!("no response") };
        let r: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(r["status"], "success", "{r}");
    }

    // The fast client reads everything in its own task.
    let mut fast = Ws::authenticated(&hub, &hub.admin).await;
    let fast_sub = fast.subscribe("notification/subscribe", json!({"deviceId": "bp-1"})).await;
    assert_eq!(live_subscriptions(&hub).await, base + 2);
    const COUNT: usize = 300;
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        while ids.len() < COUNT {
            let p = fast.push().await;
            assert_eq!(p["subscriptionId"], fast_sub);
            ids.push(p["notification"]["id"].as_i64().unwrap());
        }
        fast.quiet(Duration::from_millis(200)).await;
        (ids, fast)
    });

    // ~18 MB of pushes: far more than the socket buffers plus a 16-message queue.
    let blob = "x".repeat(60_000);
    let mut inserted = Vec::new();
    for i in 0..COUNT {
        let r =
            rest_notification(&hub, "bp-1", json!({"notification": "big", "parameters": {"i": i, "blob": blob}})).await;
        inserted.push(r["id"].as_i64().unwrap());
    }
    let (received, mut fast) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reading client keeps receiving")
        .unwrap();
    assert_eq!(received, inserted, "the reading client got every message, in order");

    // The slow client's session was closed and its subscription removed.
    wait_live_subscriptions(&hub, base + 1, 10).await;
    let mut got = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Text(_))) => got += 1,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow client's connection was not closed");
    assert!(got < COUNT, "the slow client cannot have received everything ({got})");
    // The reading client is still connected and subscribed.
    let n = rest_notification(&hub, "bp-1", json!({"notification": "after"})).await;
    let p = fast.push().await;
    assert_eq!(p["notification"]["id"], n["id"]);
}

#[tokio::test]
async fn subscription_limit_per_session() {
    skip_unless_backend!();
    let hub = hub_with(|s| s.websocket.max_subscriptions = 3).await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let first = ws.subscribe("notification/subscribe", json!({})).await;
    ws.subscribe("command/subscribe", json!({})).await;
    ws.subscribe("command/subscribe", json!({"returnUpdatedCommands": true})).await;
    for action in ["notification/subscribe", "command/subscribe"] {
        ws.err(action, json!({}), 403, "Too many subscriptions: at most 3 per session").await;
    }
    let r = ws.ok("subscription/list", json!({}), &["subscriptions"]).await;
    assert_eq!(r["subscriptions"].as_array().unwrap().len(), 3);
    // Freeing one makes room again; other sessions have their own budget.
    ws.ok("notification/unsubscribe", json!({"subscriptionId": first}), &[]).await;
    ws.subscribe("notification/subscribe", json!({})).await;
    let mut other = Ws::authenticated(&hub, &hub.admin).await;
    for _ in 0..3 {
        other.subscribe("notification/subscribe", json!({})).await;
    }
    other.err("notification/subscribe", json!({}), 403, "Too many subscriptions: at most 3 per session").await;
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    skip_unless_backend!();
    let hub = hub_with(|s| s.websocket.max_message_bytes = 128 * 1024).await;
    hub.device("big-1", 1).await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    // Large but allowed (≥ 64 KiB must work).
    let blob = "y".repeat(100 * 1024);
    let r = ws
        .ok(
            "notification/insert",
            json!({"deviceId": "big-1", "notification": {"notification": "big", "parameters": {"b": blob}}}),
            &["notification"],
        )
        .await;
    let stored =
        hub.get(&hub.admin, &format!("/device/big-1/notification/{}", r["notification"]["id"])).await.expect(200);
    assert_eq!(stored["parameters"]["b"].as_str().unwrap().len(), 100 * 1024);

    // Over the limit: the connection is closed without the request being executed.
    let blob = "z".repeat(200 * 1024);
    let req = json!({"action": "notification/insert", "requestId": "huge", "deviceId": "big-1",
                     "notification": {"notification": "huge", "parameters": {"b": blob}}});
    let _ = ws.stream.send(Message::Text(req.to_string().into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.stream.next().await {
                Some(Ok(Message::Text(t))) => panic!("unexpected answer to an oversized message: {t}"),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection stayed open");
    let list = hub.get(&hub.admin, "/device/big-1/notification?notification=huge").await.expect(200);
    assert_eq!(list, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_receive_one_broadcast() {
    skip_unless_backend!();
    let hub = Arc::new(hub().await);
    hub.device("fan-1", 1).await;
    let url = ws_url(&hub);
    let base = live_subscriptions(&hub).await;
    const SESSIONS: usize = 1000;
    const BATCH: usize = 100;
    let started = Instant::now();
    let mut sessions: Vec<(Ws, u64)> = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS / BATCH {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..BATCH {
            let url = url.clone();
            let token = hub.admin.clone();
            set.spawn(async move {
                let mut ws = Ws::connect_url(&url).await;
                ws.authenticate(&token).await;
                let sub = ws.subscribe("notification/subscribe", json!({"deviceId": "fan-1"})).await;
                (ws, sub)
            });
        }
        while let Some(r) = set.join_next().await {
            sessions.push(r.unwrap());
        }
    }
    assert_eq!(live_subscriptions(&hub).await, base + SESSIONS);
    let connected = started.elapsed();

    let n = rest_notification(&hub, "fan-1", json!({"notification": "broadcast"})).await;
    let mut set = tokio::task::JoinSet::new();
    for (mut ws, sub) in sessions {
        set.spawn(async move {
            let p = ws.recv_within(Duration::from_secs(30)).await.expect("broadcast push");
            (p, sub, ws)
        });
    }
    let mut received = 0;
    let mut keep = Vec::with_capacity(SESSIONS);
    while let Some(r) = set.join_next().await {
        let (p, sub, ws) = r.unwrap();
        check_push(&p, "notification/insert", sub);
        assert_eq!(p["notification"]["id"], n["id"]);
        received += 1;
        keep.push(ws);
    }
    assert_eq!(received, SESSIONS);
    eprintln!("{SESSIONS} sessions connected in {connected:?}; broadcast delivered in {:?} total", started.elapsed());
    drop(keep);
    wait_live_subscriptions(&hub, base, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_queue_does_not_disconnect_a_reading_client_on_bursts() {
    skip_unless_backend!();
    let hub = Arc::new(hub_with(|s| s.websocket.queue_capacity = 16).await);
    hub.device("burst-1", 1).await;
    let mut inserted = Vec::new();
    for i in 0..60 {
        let r = rest_notification(&hub, "burst-1", json!({"notification": "n", "parameters": {"i": i}})).await;
        inserted.push(r["id"].as_i64().unwrap());
    }
    // A replay larger than the queue: the client reads, so it must get all of it.
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let sub = ws
        .subscribe(
            "notification/subscribe",
            json!({"deviceId": "burst-1", "names": ["n"], "timestamp": now_ms() - 3_600_000}),
        )
        .await;
    let replay = ws.pushes(60).await;
    for p in &replay {
        check_push(p, "notification/insert", sub);
    }
    assert_eq!(ids_of(&replay, "notification"), inserted);
    ws.ok("server/info", json!({}), &["info"]).await;

    // Concurrent writers make multi-row commits: bursts larger than the queue reach a reading client.
    const TASKS: usize = 4;
    const PER_TASK: usize = 50;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let client = hub.client.clone();
        let url = hub.url("/device/burst-1/notification");
        let token = hub.admin.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..PER_TASK {
                let r = client.post(&url).bearer_auth(&token).json(&json!({"notification": "n"})).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 201);
                ids.push(r.json::<Value>().await.unwrap()["id"].as_i64().unwrap());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            ids
        }));
    }
    let mut got = Vec::new();
    while got.len() < TASKS * PER_TASK {
        let p = ws
            .recv_within(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("disconnected or stalled after {} pushes", got.len()));
        check_push(&p, "notification/insert", sub);
        got.push(p["notification"]["id"].as_i64().unwrap());
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(got.iter().copied().collect::<HashSet<_>>(), all);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "commit order: {got:?}");
    ws.ok("server/info", json!({}), &["info"]).await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    skip_unless_backend!();
    let hub = hub().await;
    hub.device("pipe-1", 1).await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    const N: usize = 60;
    for i in 0..N {
        let req = match i % 3 {
            0 => json!({"action": "notification/insert", "requestId": i, "deviceId": "pipe-1",
                        "notification": {"notification": format!("p{i}")}}),
            1 => json!({"action": "device/get", "requestId": i, "deviceId": "pipe-1"}),
            _ => json!({"action": "nope", "requestId": i}),
        };
        ws.send_text(&req.to_string()).await;
    }
    let mut last_id = 0;
    for i in 0..N {
        let r = ws.recv().await;
        assert_eq!(r["requestId"], i, "{r}");
        match i % 3 {
            0 => {
                let id = r["notification"]["id"].as_i64().unwrap();
                assert!(id > last_id, "inserts are executed in order");
                last_id = id;
            }
            1 => assert_eq!(r["device"]["id"], "pipe-1"),
            _ => assert_eq!(r["error"], "Illegal argument: nope"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_reading_clients_and_drop_silent_ones() {
    skip_unless_backend!();
    let hub = hub_with(|s| s.websocket.ping_interval_secs = 1).await;
    let base = live_subscriptions(&hub).await;
    // A client that reads (and so answers pings) survives many intervals without sending anything.
    let mut alive = Ws::authenticated(&hub, &hub.admin).await;
    alive.subscribe("notification/subscribe", json!({})).await;
    // A client that never reads again answers no pings and is dropped.
    let (mut silent, _) = tokio_tungstenite::connect_async(ws_url(&hub)).await.unwrap();
    let req = json!({"action": "authenticate", "requestId": 1, "token": hub.admin});
    silent.send(Message::Text(req.to_string().into())).await.unwrap();
    silent.next().await.unwrap().unwrap();
    let req = json!({"action": "notification/subscribe", "requestId": 2});
    silent.send(Message::Text(req.to_string().into())).await.unwrap();
    silent.next().await.unwrap().unwrap();
    assert_eq!(live_subscriptions(&hub).await, base + 2);

    alive.quiet(Duration::from_millis(4500)).await;
    assert_eq!(live_subscriptions(&hub).await, base + 1, "the silent session is gone");
    alive.ok("server/info", json!({}), &["info"]).await;
    let n = rest_notification(&hub, SAMPLE_DEVICE, json!({"notification": "still-here"})).await;
    assert_eq!(alive.push().await["notification"]["id"], n["id"]);
    drop(silent);
}

/// Deletion over WebSocket. (REST `DELETE /device/{id}` does not end them yet: `Hub::device_delete`
/// must call `Bus::end_device_subscriptions` — outside this suite's files.)
#[tokio::test]
async fn deleting_a_device_ends_its_device_subscriptions() {
    skip_unless_backend!();
    let hub = hub().await;
    hub.device("del-1", 1).await;
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let sub = ws.subscribe("notification/subscribe", json!({"deviceId": "del-1"})).await;
    let csub = ws.subscribe("command/subscribe", json!({"deviceId": "del-1"})).await;
    let mut other = Ws::authenticated(&hub, &hub.admin).await;
    other.ok("device/delete", json!({"deviceId": "del-1"}), &[]).await;
    // A new device with the same id is a different device: the old subscriptions do not see it.
    hub.device("del-1", 1).await;
    rest_notification(&hub, "del-1", json!({"notification": "new-life"})).await;
    rest_command(&hub, "del-1", json!({"command": "new-life"})).await;
    if let Some(m) = ws.recv_within(Duration::from_millis(500)).await {
        panic!("subscriptions {sub}/{csub} of a deleted device still deliver: {m}");
    }
    // They are gone from the session too.
    let r = ws.ok("subscription/list", json!({}), &["subscriptions"]).await;
    assert_eq!(r["subscriptions"], json!([]));
    ws.err(
        "notification/unsubscribe",
        json!({"subscriptionId": sub}),
        404,
        &format!("Subscription with id {sub} was not found"),
    )
    .await;
    // New subscriptions on the new device work.
    let fresh = ws.subscribe("notification/subscribe", json!({"deviceId": "del-1"})).await;
    let n = rest_notification(&hub, "del-1", json!({"notification": "fresh"})).await;
    let p = ws.push().await;
    check_push(&p, "notification/insert", fresh);
    assert_eq!(p["notification"]["id"], n["id"]);
}

#[tokio::test]
async fn unassigned_networks_stop_deliveries_to_clients() {
    skip_unless_backend!();
    let hub = hub().await;
    let net = hub.network("unassign-net").await;
    hub.device("ua-1", net).await;
    let (uid, client) = hub.client_user("ua-client", &[net]).await;
    let mut ws = Ws::authenticated(&hub, &client).await;
    ws.subscribe("notification/subscribe", json!({})).await;
    ws.subscribe("notification/subscribe", json!({"deviceId": "ua-1"})).await;
    rest_notification(&hub, "ua-1", json!({"notification": "visible"})).await;
    ws.pushes(2).await;
    hub.delete(&hub.admin, &format!("/user/{uid}/network/{net}")).await.expect(204);
    ws.err("device/get", json!({"deviceId": "ua-1"}), 403, "Access is denied").await;
    rest_notification(&hub, "ua-1", json!({"notification": "hidden"})).await;
    if let Some(m) = ws.recv_within(Duration::from_millis(500)).await {
        panic!("a device the client can no longer see still pushes: {m}");
    }
}

#[tokio::test]
async fn subscribe_to_several_devices_with_device_ids() {
    skip_unless_backend!();
    let hub = hub().await;
    let net = hub.network("ids-net").await;
    for d in ["ids-1", "ids-2", "ids-3"] {
        hub.device(d, net).await;
    }
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let sub = ws.subscribe("notification/subscribe", json!({"deviceIds": ["ids-1", "ids-2"]})).await;
    for d in ["ids-3", "ids-1", "ids-2"] {
        rest_notification(&hub, d, json!({"notification": format!("from-{d}")})).await;
    }
    let got: Vec<Value> = ws.pushes(2).await;
    let names: Vec<&str> = got.iter().map(|p| p["notification"]["notification"].as_str().unwrap()).collect();
    assert_eq!(names, ["from-ids-1", "from-ids-2"]);
    assert!(got.iter().all(|p| p["subscriptionId"] == sub));
    ws.quiet(Duration::from_millis(300)).await;
    // Every listed device must exist and be visible.
    ws.err(
        "notification/subscribe",
        json!({"deviceIds": ["ids-1", "ghost"]}),
        404,
        "Device with such deviceId = ghost not found",
    )
    .await;
    let (_, client) = hub.client_user("ids-client", &[]).await;
    let mut c = Ws::authenticated(&hub, &client).await;
    c.err("command/subscribe", json!({"deviceIds": ["ids-1"]}), 403, "Access is denied").await;
}

#[tokio::test]
async fn deleting_one_of_several_subscribed_devices_keeps_the_others() {
    skip_unless_backend!();
    let hub = hub().await;
    let net = hub.network("multi-del").await;
    for d in ["md-1", "md-2"] {
        hub.device(d, net).await;
    }
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let sub = ws.subscribe("notification/subscribe", json!({"deviceIds": ["md-1", "md-2"]})).await;
    hub.delete(&hub.admin, "/device/md-1").await.expect(204);
    // A new device with the deleted id is not delivered; the remaining device still is.
    hub.device("md-1", net).await;
    rest_notification(&hub, "md-1", json!({"notification": "reborn"})).await;
    rest_notification(&hub, "md-2", json!({"notification": "still"})).await;
    let push = ws.push().await;
    assert_eq!(
        (push["subscriptionId"].as_u64(), push["notification"]["notification"].as_str()),
        (Some(sub), Some("still"))
    );
    ws.quiet(Duration::from_millis(300)).await;
}

/// The close handshake: a client's close frame is answered with a close frame echoing its code, and
/// every close the hub starts carries a code and a reason (1009 for an oversized message, 1001 at
/// shutdown).
#[tokio::test]
async fn closes_carry_codes_and_reasons() {
    skip_unless_backend!();
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let hub = hub_with(|s| s.websocket.max_message_bytes = 4096).await;

    // Client-initiated: the echo arrives (the client sees 1000, not an abnormal 1006).
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&hub)).await.unwrap();
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() }))).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(frame)) = m {
                return frame;
            }
        }
        None
    })
    .await
    .expect("the hub answers the close");
    assert_eq!(echoed.map(|f| f.code), Some(CloseCode::Normal));

    // A message over the limit: 1009 with a reason.
    let mut big = Ws::authenticated(&hub, &hub.admin).await;
    big.send_text(&format!(r#"{{"action":"server/info","pad":"{}"}}"#, "x".repeat(10_000))).await;
    let (code, reason) = big.closed_within(Duration::from_secs(5)).await.expect("a close frame");
    assert_eq!(code, 1009);
    assert!(reason.contains("4096"), "{reason}");

    // Shutdown: 1001 "going away" with a reason.
    let mut last = Ws::authenticated(&hub, &hub.admin).await;
    let stop = tokio::spawn(hub.stop());
    let (code, reason) = last.closed_within(Duration::from_secs(10)).await.expect("a close frame at shutdown");
    assert_eq!(code, 1001);
    assert!(!reason.is_empty());
    stop.await.unwrap();
}

/// A client that subscribes and never reads is closed with 1008 and a reason once its queue (bounded
/// in bytes as well as messages) stays full; a reading client beside it is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_with_a_policy_code() {
    skip_unless_backend!();
    let hub = hub_with(|s| {
        s.websocket.max_queue_bytes = 64 * 1024;
        s.websocket.send_timeout_secs = 1;
    })
    .await;
    hub.device("flood-1", 1).await;
    let mut reader = Ws::authenticated(&hub, &hub.admin).await;
    let sub = reader.subscribe("notification/subscribe", json!({"deviceId": "flood-1"})).await;
    let mut sleeper = Ws::authenticated(&hub, &hub.admin).await;
    sleeper.subscribe("notification/subscribe", json!({"deviceId": "flood-1"})).await;

    // Pushes of 16 KiB until the hub gives up on the sleeper (its subscription ends): far more than
    // the socket buffers and the 64 KiB queue hold.
    let base = live_subscriptions(&hub).await;
    let pad = "p".repeat(16 * 1024);
    let mut sent = 0;
    while live_subscriptions(&hub).await == base {
        assert!(sent < 3000, "the non-reading session was never closed");
        rest_notification(&hub, "flood-1", json!({"notification": "big", "parameters": {"i": sent, "pad": pad}})).await;
        sent += 1;
        let p = reader.push().await;
        check_push(&p, "notification/insert", sub);
    }
    // The sleeper wakes up: it finds a close frame with the policy code after what was buffered.
    let (code, reason) = sleeper.closed_within(Duration::from_secs(20)).await.expect("a close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("not reading"), "{reason}");
    reader.ok("server/info", json!({}), &["info"]).await;
}
