//! MQTT API over the embedded broker, with real rumqttc clients and raw sockets (docs/API.md §13,
//! P22–P23, §18): CONNECT authentication, `dh/request` actions on response topics, event topics and
//! their filters, delivery across transports (REST, long poll, WebSocket), the authorization matrix,
//! plain-topic policies, hostile input and a thousand concurrent device sessions.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hivehub::mqtt::codec::{self, Packet as Wire};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::TestHub;
use crate::common::mqtt::{connect_code, options, with_credentials, Mqtt, Msg, GRANTED, QUIET, REFUSED};
use crate::common::ws::{live_subscriptions, wait_new_subscriptions, Ws};
use crate::common::{assert_keys, ADMIN_LOGIN, ADMIN_PASSWORD};

const SAMPLE_DEVICE: &str = "e50d6085-2aba-48e9-b1c3-73c673e414be";
const CLIENT_PASSWORD: &str = "client-pass-1";

/// Asserts a push message: `{"action", "subscriptionId", "<notification|command>": message}`.
fn assert_push(m: &Msg, topic: &str, action: &str, key: &str, message: &Value) {
    assert_eq!(m.topic, topic, "{}", m.payload);
    assert_keys(&m.payload, &["action", "subscriptionId", key]);
    assert_eq!(m.payload["action"], action, "{}", m.payload);
    assert!(m.payload["subscriptionId"].is_u64(), "{}", m.payload);
    assert_eq!(&m.payload[key], message, "{}", m.payload);
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A network `network` holding `devices`, and an MQTT session `client_id` of a client user `login`
/// assigned to it, connected with the user's access token; returns (network id, session).
async fn network_and_device_session(
    hub: &TestHub,
    network: &str,
    devices: &[&str],
    login: &str,
    client_id: &str,
) -> (i64, Mqtt) {
    let net = hub.network(network).await;
    for device in devices {
        hub.device(device, net).await;
    }
    let (_, token) = hub.client_user(login, &[net]).await;
    (net, Mqtt::token(hub, client_id, &token).await)
}

async fn notification_names(hub: &TestHub, device: &str) -> Vec<String> {
    let list = hub.get(&hub.admin, &format!("/device/{device}/notification?sortOrder=ASC&take=1000")).await.expect(200);
    list.as_array().unwrap().iter().map(|n| n["notification"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn mqtt_smoke() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut m = Mqtt::login(&hub, "smoke-1", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    let r = m.request("device/list", json!({})).await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["requestId"], "r1");
    assert_eq!(r["devices"][0]["id"], SAMPLE_DEVICE);

    assert_eq!(m.subscribe("dh/notification/#").await, GRANTED);
    hub.post(&hub.admin, &format!("/device/{SAMPLE_DEVICE}/notification"), json!({"notification": "hi"}))
        .await
        .expect(201);
    let (topic, push) = m.recv().await;
    assert_eq!(topic, format!("dh/notification/1/1/{SAMPLE_DEVICE}/hi"));
    assert_eq!(push["action"], "notification/insert");
    assert_eq!(push["notification"]["notification"], "hi");

    // Plain topics are ordinary MQTT.
    assert_eq!(m.subscribe("plain/+").await, GRANTED);
    m.client.publish("plain/x", QoS::AtLeastOnce, false, "{\"v\":1}").await.unwrap();
    let (topic, v) = m.recv().await;
    assert_eq!((topic.as_str(), v), ("plain/x", json!({"v": 1})));

    // Bad password: refused with a proper CONNACK code.
    let o = with_credentials(&hub, "bad", ADMIN_LOGIN, "wrong-password");
    assert_eq!(connect_code(o).await, Ok(ConnectReturnCode::BadUserNamePassword));
}

// ---------------------------------------------------------------------------------------------
// CONNECT and session authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_with_password_or_access_token_and_refusals() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let net = hub.network("connect-net").await;
    let (client_id, client_token) = hub.client_user("connect-client", &[net]).await;

    // Login and password of an admin and of a client.
    let mut admin = Mqtt::login(&hub, "c-admin", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    let me = admin.ok("user/getCurrent", json!({}), &["current"]).await;
    assert_eq!(me["current"]["login"], ADMIN_LOGIN);
    assert_eq!(me["current"]["role"], 0);
    let mut client = Mqtt::login(&hub, "c-client", "connect-client", CLIENT_PASSWORD).await;
    let me = client.ok("user/getCurrent", json!({}), &["current"]).await;
    assert_eq!(me["current"]["id"], client_id);
    assert_eq!(me["current"]["role"], 1);

    // An access token as the password: the username is ignored, even another user's login.
    for (i, username) in ["anything", "", ADMIN_LOGIN, "connect-client"].iter().enumerate() {
        let mut m = Mqtt::login(&hub, &format!("c-token-{i}"), username, &client_token).await;
        let me = m.ok("user/getCurrent", json!({}), &["current"]).await;
        assert_eq!(me["current"]["login"], "connect-client", "username {username:?}");
        // ... and the session has the token's (client) permissions, not an admin's.
        m.err("user/list", json!({}), 403, "Access is denied").await;
    }

    // Refusals.
    let (_, refresh) = {
        let t = hub
            .request(
                reqwest::Method::POST,
                None,
                "/token",
                Some(json!({"login": "connect-client", "password": CLIENT_PASSWORD})),
            )
            .await
            .expect(201);
        (t["accessToken"].as_str().unwrap().to_string(), t["refreshToken"].as_str().unwrap().to_string())
    };
    let bad = ConnectReturnCode::BadUserNamePassword;
    let cases: Vec<(&str, String, &str)> = vec![
        (ADMIN_LOGIN, "wrong-password".into(), "wrong password"),
        ("no-such-user", "whatever-1".into(), "unknown user"),
        ("connect-client", refresh.clone(), "refresh token as password"),
        ("x", format!("{client_token}x"), "access token with a broken signature"),
        ("x", "eyJhbGciOiJIUzI1NiJ9.e30.c2ln".into(), "JWT-shaped garbage"),
        (ADMIN_LOGIN, String::new(), "empty password"),
    ];
    for (i, (user, password, what)) in cases.iter().enumerate() {
        let o = with_credentials(&hub, &format!("c-bad-{i}"), user, password);
        assert_eq!(connect_code(o).await, Ok(bad), "{what}");
    }

    // Locked and disabled users: refused like a wrong password, even with the right one (the answer
    // does not tell a locked account from a bad password).
    for (status, login) in [(1, "connect-locked"), (2, "connect-disabled")] {
        let (id, token) = hub.client_user(login, &[net]).await;
        hub.put(&hub.admin, &format!("/user/{id}"), json!({"status": status})).await.expect(204);
        let o = with_credentials(&hub, &format!("c-{login}"), login, CLIENT_PASSWORD);
        assert_eq!(connect_code(o).await, Ok(bad), "status {status}");
        // A token issued before the lock stops working too.
        let o = with_credentials(&hub, &format!("c-{login}-token"), "x", &token);
        assert_ne!(connect_code(o).await, Ok(ConnectReturnCode::Success), "status {status}");
    }

    // The refused attempts did not disturb the live sessions.
    admin.ok("server/info", json!({}), &["info"]).await;
    client.ok("server/info", json!({}), &["info"]).await;
}

#[tokio::test]
async fn anonymous_session_may_only_authenticate_until_it_does() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut anon = Mqtt::anonymous(&hub, "anon-1").await;

    for filter in [
        "dh/response/device/list@anon-1",
        "dh/response/server/info@anon-1",
        "dh/response/token/refresh@anon-1",
        "dh/response/token@someone-else",
        "dh/response/authenticate@someone-else",
        "dh/notification/#",
        "dh/notification/+/+/e50d6085-2aba-48e9-b1c3-73c673e414be/#",
        "dh/command/#",
        "dh/command_update/#",
        "dh/notification/#@anon-1",
        "dh/request",
        "dh/#",
    ] {
        assert_eq!(anon.subscribe(filter).await, REFUSED, "{filter}");
    }
    assert_eq!(anon.subscribe("dh/response/token@anon-1").await, GRANTED);
    assert_eq!(anon.subscribe("dh/response/authenticate@anon-1").await, GRANTED);
    anon.responses.insert("dh/response/token@anon-1".into());
    anon.responses.insert("dh/response/authenticate@anon-1".into());

    // Requests other than token/authenticate get 401 (visible once authenticated: see below);
    // they change nothing.
    anon.publish_json(
        "dh/request",
        json!({"action": "notification/insert", "deviceId": SAMPLE_DEVICE,
               "notification": {"notification": "anonymous-insert"}}),
    )
    .await;

    // token: errors as REST login; success returns both tokens but does not authenticate.
    anon.err("token", json!({"login": ADMIN_LOGIN, "password": "wrong-password"}), 401, "Invalid credentials").await;
    anon.err("token", json!({"login": "nobody-here", "password": "wrong-password"}), 401, "Invalid credentials").await;
    let t = anon
        .ok("token", json!({"login": ADMIN_LOGIN, "password": ADMIN_PASSWORD}), &["accessToken", "refreshToken"])
        .await;
    let access = t["accessToken"].as_str().unwrap().to_string();
    let refresh = t["refreshToken"].as_str().unwrap().to_string();
    assert_eq!(anon.subscribe("dh/notification/#").await, REFUSED);
    assert_eq!(anon.subscribe("dh/response/device/list@anon-1").await, REFUSED);

    // authenticate: failures keep the session anonymous.
    anon.err("authenticate", json!({}), 401, "Unauthorized").await;
    anon.err("authenticate", json!({"token": refresh}), 401, "Invalid credentials").await;
    anon.err("authenticate", json!({"token": "garbage"}), 401, "Invalid credentials").await;
    assert_eq!(anon.subscribe("dh/notification/#").await, REFUSED);

    anon.ok("authenticate", json!({"token": access}), &[]).await;
    // Now it can do everything the token allows.
    assert_eq!(anon.subscribe("dh/notification/+/+/+/#").await, GRANTED);
    let devices = anon.ok("device/list", json!({}), &["devices"]).await;
    assert_eq!(devices["devices"][0]["id"], SAMPLE_DEVICE);
    let me = anon.ok("user/getCurrent", json!({}), &["current"]).await;
    assert_eq!(me["current"]["login"], ADMIN_LOGIN);
    hub.post(&hub.admin, &format!("/device/{SAMPLE_DEVICE}/notification"), json!({"notification": "after-auth"}))
        .await
        .expect(201);
    let m = anon.msg().await;
    assert_eq!(m.topic, format!("dh/notification/1/1/{SAMPLE_DEVICE}/after-auth"));
    assert_eq!(m.payload["notification"]["notification"], "after-auth");

    // The anonymous insert never happened.
    let names = notification_names(&hub, SAMPLE_DEVICE).await;
    assert!(!names.contains(&"anonymous-insert".to_string()), "{names:?}");
    anon.quiet(QUIET).await;
}

#[tokio::test]
async fn anonymous_connect_refused_when_disallowed() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.mqtt.allow_anonymous = false).await;
    assert_eq!(connect_code(options(&hub, "anon-no")).await, Ok(ConnectReturnCode::NotAuthorized));
    let mut m = Mqtt::login(&hub, "named", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    m.ok("server/info", json!({}), &["info"]).await;
}

// ---------------------------------------------------------------------------------------------
// dh/request: the WebSocket action table on response topics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_answer_on_their_response_topics_in_websocket_shapes() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut m = Mqtt::login(&hub, "req-1", ADMIN_LOGIN, ADMIN_PASSWORD).await;

    let info = m.ok("server/info", json!({}), &["info"]).await;
    assert_keys(&info["info"], &["apiVersion", "serverTimestamp", "restServerUrl"]);

    m.ok(
        "device/save",
        json!({"deviceId": "mq-dev-1", "device": {"name": "mq device", "networkId": 1, "data": {"a": 1}}}),
        &[],
    )
    .await;
    let d = m.ok("device/get", json!({"deviceId": "mq-dev-1"}), &["device"]).await;
    assert_eq!(
        d["device"],
        json!({"id": "mq-dev-1", "name": "mq device", "data": {"a": 1}, "networkId": 1,
               "deviceTypeId": 1, "isBlocked": false})
    );
    let list = m.ok("device/list", json!({"name": "mq device"}), &["devices"]).await;
    assert_eq!(list["devices"], json!([d["device"]]));
    m.err("device/get", json!({"deviceId": "ghost"}), 404, "Device with such deviceId = ghost not found").await;

    let n = m
        .ok(
            "notification/insert",
            json!({"deviceId": "mq-dev-1", "notification": {"notification": "temp", "parameters": {"t": 21.5}}}),
            &["notification"],
        )
        .await;
    assert_keys(&n["notification"], &["id", "timestamp"]);
    let nid = n["notification"]["id"].as_i64().unwrap();
    let got = m.ok("notification/get", json!({"deviceId": "mq-dev-1", "notificationId": nid}), &["notification"]).await;
    assert_eq!(got["notification"]["parameters"], json!({"t": 21.5}));
    assert_eq!(got["notification"]["timestamp"], n["notification"]["timestamp"]);
    let list =
        m.ok("notification/list", json!({"deviceId": "mq-dev-1", "notification": "temp"}), &["notifications"]).await;
    assert_eq!(list["notifications"], json!([got["notification"]]));
    m.err("notification/insert", json!({"deviceId": "mq-dev-1"}), 400, "Notification is required").await;

    let c = m
        .ok(
            "command/insert",
            json!({"deviceId": "mq-dev-1", "command": {"command": "reboot", "parameters": {"delay": 1}}}),
            &["command"],
        )
        .await;
    assert_keys(&c["command"], &["id", "timestamp", "lastUpdated", "userId"]);
    assert_eq!(c["command"]["userId"], 1);
    let cid = c["command"]["id"].as_i64().unwrap();
    m.ok(
        "command/update",
        json!({"deviceId": "mq-dev-1", "commandId": cid, "command": {"status": "done", "result": {"ok": true}}}),
        &[],
    )
    .await;
    let got = m.ok("command/get", json!({"deviceId": "mq-dev-1", "commandId": cid}), &["command"]).await;
    assert_eq!(got["command"]["status"], "done");
    assert_eq!(got["command"]["result"], json!({"ok": true}));
    let list = m.ok("command/list", json!({"deviceId": "mq-dev-1"}), &["commands"]).await;
    assert_eq!(list["commands"], json!([got["command"]]));
    m.err(
        "command/update",
        json!({"deviceId": "mq-dev-1", "commandId": 999999, "command": {"status": "x"}}),
        404,
        "Command with id = 999999 not found",
    )
    .await;

    let nets = m.ok("network/list", json!({}), &["networks"]).await;
    assert_eq!(nets["networks"][0]["id"], 1);
    let types = m.ok("devicetype/list", json!({}), &["deviceTypes"]).await;
    assert_eq!(types["deviceTypes"][0]["id"], 1);
    let me = m.ok("user/getCurrent", json!({}), &["current"]).await;
    assert_eq!(me["current"]["login"], ADMIN_LOGIN);

    // MQTT event subscriptions are the session's subscriptions.
    let subs = m.ok("subscription/list", json!({}), &["subscriptions"]).await;
    assert_eq!(subs["subscriptions"], json!([]));
    assert_eq!(m.subscribe("dh/notification/+/+/mq-dev-1/temp").await, GRANTED);
    let subs = m.ok("subscription/list", json!({"type": "notification"}), &["subscriptions"]).await;
    let list = subs["subscriptions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{subs}");
    assert_eq!(list[0]["type"], "notification");
    assert_eq!(list[0]["deviceId"], "mq-dev-1");
    assert_eq!(list[0]["names"], json!(["temp"]));

    // Unknown and missing actions.
    m.err("foo/bar", json!({}), 400, "Illegal argument: foo/bar").await;
    let r = m.request_raw(json!({"requestId": 5})).await;
    assert_eq!(
        r,
        json!({"requestId": 5, "status": "error", "code": 400,
               "error": "'action' field could not be parsed to known endpoint"})
    );

    // requestId is echoed with its JSON type; absent → null.
    for rid in [
        json!("abc"),
        json!(7),
        json!(-3),
        json!(1.5),
        json!(true),
        json!(null),
        json!({"k": [1, "two"]}),
        json!([1, 2]),
    ] {
        let r = m.request_raw(json!({"action": "server/info", "requestId": rid.clone()})).await;
        assert_eq!(r["requestId"], rid, "{r}");
        assert_keys(&r, &["action", "requestId", "status", "info"]);
    }
    let r = m.request_raw(json!({"action": "server/info"})).await;
    assert_keys(&r, &["action", "requestId", "status", "info"]);
    assert_eq!(r["requestId"], Value::Null);
    m.quiet(QUIET).await;
}

#[tokio::test]
async fn responses_need_an_earlier_subscription_and_follow_the_request_qos() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut m = Mqtt::login(&hub, "resp-1", ADMIN_LOGIN, ADMIN_PASSWORD).await;

    // Not subscribed yet: the response is dropped, not kept for later.
    m.publish_json("dh/request", json!({"action": "cluster/info", "requestId": "lost"})).await;
    let r = m.request_raw(json!({"action": "cluster/info", "requestId": "kept"})).await;
    assert_eq!(r["requestId"], "kept");
    m.quiet(QUIET).await;

    // QoS of the response = min(request QoS, subscription QoS).
    let topic = "dh/response/server/info@resp-1";
    assert_eq!(m.subscribe(topic).await, GRANTED);
    let req = json!({"action": "server/info"}).to_string();
    m.publish("dh/request", req.clone(), QoS::AtMostOnce).await;
    assert_eq!(m.response_on(topic).await.qos, QoS::AtMostOnce);
    m.publish("dh/request", req.clone(), QoS::AtLeastOnce).await;
    assert_eq!(m.response_on(topic).await.qos, QoS::AtLeastOnce);
    assert_eq!(m.subscribe_qos(topic, QoS::AtMostOnce).await, SubscribeReasonCode::Success(QoS::AtMostOnce));
    m.publish("dh/request", req.clone(), QoS::AtLeastOnce).await;
    assert_eq!(m.response_on(topic).await.qos, QoS::AtMostOnce);

    // Unsubscribing a response topic stops the responses.
    m.unsubscribe(topic).await;
    m.publish("dh/request", req, QoS::AtLeastOnce).await;
    m.quiet(QUIET).await;
}

#[tokio::test]
async fn malformed_json_answers_an_error_and_other_sessions_are_unaffected() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut bad = Mqtt::login(&hub, "json-bad", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    let mut other = Mqtt::login(&hub, "json-other", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(other.subscribe("dh/response/error@json-other").await, GRANTED);
    assert_eq!(bad.subscribe("dh/response/error@json-bad").await, GRANTED);

    let malformed = json!({"status": "error", "code": 400, "error": "Malformed Json received."});
    for payload in [
        &b"{not json"[..],
        b"",
        b"[1, 2]",
        b"\"a string\"",
        b"42",
        b"{\"action\": \"server/info\"",
        b"\xff\xfe\x00garbage",
    ] {
        bad.publish("dh/request", payload.to_vec(), QoS::AtLeastOnce).await;
        let m = bad.response_on("dh/response/error@json-bad").await;
        assert_eq!(m.payload, malformed, "payload {:?}", String::from_utf8_lossy(payload));
    }
    // Both sessions still work; the other one saw nothing.
    bad.ok("server/info", json!({}), &["info"]).await;
    other.ok("device/list", json!({}), &["devices"]).await;
    other.quiet(QUIET).await;
    bad.quiet(QUIET).await;
}

// ---------------------------------------------------------------------------------------------
// Device traffic across transports
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn device_notifications_reach_rest_long_polls_and_websockets() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let (net, mut device) = network_and_device_session(&hub, "sensors", &["mq-sensor"], "sensor-user", "sensor").await;
    // The device watches its own notifications: it must get the hub's push, never its raw publish.
    assert_eq!(device.subscribe("dh/notification/+/+/mq-sensor/#").await, GRANTED);
    let mut observer = Mqtt::login(&hub, "sensor-observer", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(observer.subscribe(&format!("dh/notification/{net}/#")).await, GRANTED);
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let sub = ws.subscribe("notification/subscribe", json!({"deviceId": "mq-sensor"})).await;

    // Each way of publishing, with the name it stores and the parameters it carries.
    let ways: Vec<(&str, &str, Value)> = vec![
        ("request", "temp", json!({"t": 21.5})),
        ("direct", "humidity", json!({"h": 40})),
        ("direct-override", "pressure", json!({"p": 1013})),
        ("direct-no-name-level", "nameless", json!({"n": 1})),
    ];
    for (way, name, params) in ways {
        let poll = format!("/device/mq-sensor/notification/poll?waitTimeout=30&names={name}");
        let base = live_subscriptions(&hub).await;
        let (polled, ()) = tokio::join!(hub.get(&hub.admin, &poll), async {
            // The long poll registers first: it has no timestamp, so only a live event wakes it.
            wait_new_subscriptions(&hub, base, 1).await;
            match way {
                "request" => {
                    let r = device
                        .ok(
                            "notification/insert",
                            json!({"deviceId": "mq-sensor", "notification": {"notification": name, "parameters": params}}),
                            &["notification"],
                        )
                        .await;
                    assert_keys(&r["notification"], &["id", "timestamp"]);
                }
                "direct" => {
                    device
                        .publish_json(
                            &format!("dh/notification/{net}/1/mq-sensor/{name}"),
                            json!({"parameters": params}),
                        )
                        .await
                }
                "direct-override" => {
                    // The payload's name wins over the topic's.
                    device
                        .publish_json(
                            &format!("dh/notification/{net}/1/mq-sensor/ignored"),
                            json!({"notification": name, "parameters": params}),
                        )
                        .await
                }
                _ => {
                    device
                        .publish_json(
                            &format!("dh/notification/{net}/1/mq-sensor"),
                            json!({"notification": name, "parameters": params}),
                        )
                        .await
                }
            }
            // Acknowledged means stored: REST finds it at once.
            let stored =
                hub.get(&hub.admin, &format!("/device/mq-sensor/notification?notification={name}")).await.expect(200);
            assert_eq!(stored.as_array().unwrap().len(), 1, "{way}: {stored}");
        });
        let polled = polled.expect(200);
        let polled = polled.as_array().unwrap();
        assert_eq!(polled.len(), 1, "{way}: {polled:?}");
        let n = &polled[0];
        assert_eq!(n["notification"], name, "{way}");
        assert_eq!(n["parameters"], params, "{way}");
        assert_eq!(n["deviceId"], "mq-sensor");
        assert_eq!(n["networkId"], net);
        assert_eq!(n["deviceTypeId"], 1);
        let id = n["id"].as_i64().unwrap();
        assert_eq!(hub.get(&hub.admin, &format!("/device/mq-sensor/notification/{id}")).await.expect(200), *n);

        let push = ws.push().await;
        assert_eq!(push, json!({"action": "notification/insert", "subscriptionId": sub, "notification": n}), "{way}");
        let topic = format!("dh/notification/{net}/1/mq-sensor/{name}");
        let m = observer.msg().await;
        assert_push(&m, &topic, "notification/insert", "notification", n);
        let m = device.msg().await;
        assert_push(&m, &topic, "notification/insert", "notification", n);
    }

    // Direct publishes that cannot be stored are dropped (still acknowledged) and change nothing.
    let before = notification_names(&hub, "mq-sensor").await;
    for (topic, payload) in [
        (format!("dh/notification/{net}/1/mq-sensor"), json!({"parameters": {}})),
        (format!("dh/notification/{}/1/mq-sensor/x", net + 100), json!({})),
        (format!("dh/notification/{net}/77/mq-sensor/x"), json!({})),
        (format!("dh/notification/{net}/1/no-such-device/x"), json!({})),
        (format!("dh/notification/{net}/1/mq-sensor/$device-add"), json!({})),
        (format!("dh/notification/{net}/1/mq-sensor/x"), json!("not an object")),
        (format!("dh/notification/{net}/1/mq-sensor/x"), json!({"parameters": "not an object"})),
        (format!("dh/notification/{net}/1/mq-sensor/x/extra"), json!({})),
        (format!("dh/notification/{net}/1"), json!({"notification": "short"})),
    ] {
        device.publish_json(&topic, payload).await;
    }
    device.publish(&format!("dh/notification/{net}/1/mq-sensor/x"), "{oops", QoS::AtLeastOnce).await;
    assert_eq!(notification_names(&hub, "mq-sensor").await, before);
    observer.quiet(QUIET).await;
    device.quiet(Duration::ZERO).await;
    ws.quiet(Duration::ZERO).await;
}

#[tokio::test]
async fn commands_reach_devices_and_their_updates_wake_waiters() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let (net, mut device) =
        network_and_device_session(&hub, "actuators", &["mq-actuator", "mq-other"], "actuator-user", "actuator").await;
    assert_eq!(device.subscribe("dh/command/+/+/mq-actuator/#").await, GRANTED);
    let mut observer = Mqtt::login(&hub, "cmd-observer", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(observer.subscribe("dh/command_update/#").await, GRANTED);
    let mut ws = Ws::authenticated(&hub, &hub.admin).await;
    let ws_sub =
        ws.subscribe("command/subscribe", json!({"deviceId": "mq-actuator", "returnUpdatedCommands": true})).await;

    for (way, name) in [("request", "open"), ("direct-id", "close"), ("direct-commandId", "stop")] {
        let created = hub
            .post(
                &hub.admin,
                "/device/mq-actuator/command",
                json!({"command": name, "parameters": {"v": 1}, "lifetime": 60}),
            )
            .await
            .expect(201);
        let cid = created["id"].as_i64().unwrap();
        // The device receives the insert with QoS 1 on the concrete topic.
        let m = device.msg().await;
        assert_eq!(m.qos, QoS::AtLeastOnce);
        let full = hub.get(&hub.admin, &format!("/device/mq-actuator/command/{cid}")).await.expect(200);
        assert_eq!(full["parameters"], json!({"v": 1}));
        assert_push(&m, &format!("dh/command/{net}/1/mq-actuator/{name}"), "command/insert", "command", &full);

        let wait = format!("/device/mq-actuator/command/{cid}/poll?waitTimeout=30");
        let status = format!("{name}-done");
        let result = json!({"way": way});
        let base = live_subscriptions(&hub).await;
        let (waited, ()) = tokio::join!(hub.get(&hub.admin, &wait), async {
            wait_new_subscriptions(&hub, base, 1).await;
            let topic = format!("dh/command_update/{net}/1/mq-actuator/{name}");
            match way {
                "request" => {
                    device
                        .ok(
                            "command/update",
                            json!({"deviceId": "mq-actuator", "commandId": cid,
                                   "command": {"status": status, "result": result}}),
                            &[],
                        )
                        .await;
                }
                "direct-id" => {
                    device.publish_json(&topic, json!({"id": cid, "status": status, "result": result})).await
                }
                _ => device.publish_json(&topic, json!({"commandId": cid, "status": status, "result": result})).await,
            }
        });
        let waited = waited.expect(200);
        assert_eq!(waited["id"], cid, "{way}");
        assert_eq!(waited["status"], status, "{way}");
        assert_eq!(waited["result"], result, "{way}");
        assert_eq!(waited["parameters"], json!({"v": 1}));
        assert_eq!(hub.get(&hub.admin, &format!("/device/mq-actuator/command/{cid}")).await.expect(200), waited);

        let m = observer.msg().await;
        assert_push(&m, &format!("dh/command_update/{net}/1/mq-actuator/{name}"), "command/update", "command", &waited);
        let p = ws.push().await;
        assert_eq!(p, json!({"action": "command/update", "subscriptionId": ws_sub, "command": waited}));
    }

    // A command insert published directly by a client reaches the device.
    observer.publish_json(&format!("dh/command/{net}/1/mq-actuator/beep"), json!({"parameters": {"hz": 440}})).await;
    let m = device.msg().await;
    assert_eq!(m.topic, format!("dh/command/{net}/1/mq-actuator/beep"));
    assert_eq!(m.payload["command"]["parameters"], json!({"hz": 440}));
    assert_eq!(m.payload["command"]["userId"], 1);
    let beep = m.payload["command"]["id"].as_i64().unwrap();

    // Updates that cannot apply are dropped and change nothing: no id, unknown id, the id of
    // another device's command, a topic of another device.
    let other = hub.post(&hub.admin, "/device/mq-other/command", json!({"command": "other"})).await.expect(201)["id"]
        .as_i64()
        .unwrap();
    let topic = format!("dh/command_update/{net}/1/mq-actuator/beep");
    device.publish_json(&topic, json!({"status": "no-id"})).await;
    device.publish_json(&topic, json!({"id": 999999, "status": "unknown-id"})).await;
    device.publish_json(&topic, json!({"id": other, "status": "wrong-device"})).await;
    device
        .publish_json(
            &format!("dh/command_update/{net}/1/mq-other/other"),
            json!({"id": beep, "status": "wrong-device"}),
        )
        .await;
    device
        .err(
            "command/update",
            json!({"deviceId": "mq-actuator", "commandId": other, "command": {"status": "wrong-device"}}),
            404,
            &format!("Command with id = {other} not found"),
        )
        .await;
    for (dev, id) in [("mq-actuator", beep), ("mq-other", other)] {
        let c = hub.get(&hub.admin, &format!("/device/{dev}/command/{id}")).await.expect(200);
        assert_eq!(c["status"], Value::Null, "{c}");
    }
    // The device's dh/command subscription never carries updates.
    device.quiet(QUIET).await;
    observer.quiet(Duration::ZERO).await;
    ws.quiet(Duration::ZERO).await;
}

// ---------------------------------------------------------------------------------------------
// Topic filters
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn overlapping_filters_deliver_once_and_unsubscribe_stops_delivery() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut m = Mqtt::login(&hub, "overlap", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    let filters = [
        "dh/notification/#".to_string(),
        format!("dh/notification/+/+/{SAMPLE_DEVICE}/#"),
        "dh/notification/1/#".to_string(),
        "dh/notification".to_string(),
        format!("dh/notification/+/+/{SAMPLE_DEVICE}/ov"),
    ];
    for f in &filters {
        assert_eq!(m.subscribe(f).await, GRANTED, "{f}");
    }
    let subs = m.ok("subscription/list", json!({"type": "notification"}), &["subscriptions"]).await;
    assert_eq!(subs["subscriptions"].as_array().unwrap().len(), filters.len());

    let send = |name: &'static str| {
        let hub = &hub;
        async move {
            hub.post(&hub.admin, &format!("/device/{SAMPLE_DEVICE}/notification"), json!({"notification": name}))
                .await
                .expect(201)["id"]
                .as_i64()
                .unwrap()
        }
    };
    let id = send("ov").await;
    let got = m.drain(QUIET).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, format!("dh/notification/1/1/{SAMPLE_DEVICE}/ov"));
    assert_eq!(got[0].payload["notification"]["id"], id);

    // Subscribing to the same filter again replaces the subscription instead of adding one.
    assert_eq!(m.subscribe("dh/notification/#").await, GRANTED);
    send("ov").await;
    assert_eq!(m.drain(QUIET).await.len(), 1);

    for f in &filters[..4] {
        m.unsubscribe(f).await;
    }
    send("ov").await;
    send("other-name").await;
    let got = m.drain(QUIET).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].payload["notification"]["notification"], "ov");
    m.unsubscribe(&filters[4]).await;
    let subs = m.ok("subscription/list", json!({}), &["subscriptions"]).await;
    assert_eq!(subs["subscriptions"], json!([]));
    send("ov").await;
    m.quiet(QUIET).await;
}

#[tokio::test]
async fn topic_levels_filter_by_network_type_device_and_name() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let n2 = hub.network("second").await;
    hub.device("f-dev", n2).await;
    let notify = |device: &'static str, name: &'static str| {
        let hub = &hub;
        async move {
            hub.post(&hub.admin, &format!("/device/{device}/notification"), json!({"notification": name}))
                .await
                .expect(201);
        }
    };
    let mut by_name = Mqtt::login(&hub, "f-name", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(by_name.subscribe("dh/notification/+/+/f-dev/wanted").await, GRANTED);
    // P23: network and type levels are ignored when the device level is given.
    let mut device_wins = Mqtt::login(&hub, "f-device", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(device_wins.subscribe("dh/notification/999/999/f-dev/#").await, GRANTED);
    let mut by_net = Mqtt::login(&hub, "f-net", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(by_net.subscribe(&format!("dh/notification/{n2}")).await, GRANTED);
    let mut by_type = Mqtt::login(&hub, "f-type", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(by_type.subscribe("dh/notification/+/1/+/wanted").await, GRANTED);
    let mut private = Mqtt::login(&hub, "f-private", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(private.subscribe("dh/notification/+/+/f-dev/#@f-private").await, GRANTED);
    let mut updates = Mqtt::login(&hub, "f-updates", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(updates.subscribe("dh/command_update/+/+/f-dev").await, GRANTED);
    let mut inserts = Mqtt::login(&hub, "f-inserts", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(inserts.subscribe(&format!("dh/command/{n2}/+/+/wanted")).await, GRANTED);
    // Filters the hub cannot mean.
    for bad in [
        "dh/notification/x/+/+/#",
        "dh/notification/+/y/+/#",
        "dh/notification/+/+/f-dev/wanted/more",
        "dh/notification/#/f-dev",
        "dh/notifications/#",
        "dh/+/#",
        "dh/notification/9999/#",
    ] {
        assert_eq!(by_name.subscribe(bad).await, REFUSED, "{bad}");
    }

    notify("f-dev", "wanted").await;
    notify("f-dev", "unwanted").await;
    notify(SAMPLE_DEVICE, "wanted").await;
    let topic = |dev: &str, net: i64, name: &str| format!("dh/notification/{net}/1/{dev}/{name}");
    let topics = |ms: Vec<Msg>| ms.into_iter().map(|m| m.topic).collect::<Vec<_>>();
    assert_eq!(topics(by_name.drain(QUIET).await), [topic("f-dev", n2, "wanted")]);
    assert_eq!(
        topics(device_wins.drain(Duration::from_millis(100)).await),
        [topic("f-dev", n2, "wanted"), topic("f-dev", n2, "unwanted")]
    );
    assert_eq!(
        topics(by_net.drain(Duration::from_millis(100)).await),
        [topic("f-dev", n2, "wanted"), topic("f-dev", n2, "unwanted")]
    );
    assert_eq!(
        topics(by_type.drain(Duration::from_millis(100)).await),
        [topic("f-dev", n2, "wanted"), topic(SAMPLE_DEVICE, 1, "wanted")]
    );
    assert_eq!(
        topics(private.drain(Duration::from_millis(100)).await),
        [
            format!("{}@f-private", topic("f-dev", n2, "wanted")),
            format!("{}@f-private", topic("f-dev", n2, "unwanted"))
        ]
    );

    // Command inserts vs updates.
    let cid = hub.post(&hub.admin, "/device/f-dev/command", json!({"command": "wanted"})).await.expect(201)["id"]
        .as_i64()
        .unwrap();
    hub.post(&hub.admin, "/device/f-dev/command", json!({"command": "unwanted"})).await.expect(201);
    hub.put(&hub.admin, &format!("/device/f-dev/command/{cid}"), json!({"status": "s1"})).await.expect(204);
    let m = inserts.msg().await;
    assert_eq!(m.topic, format!("dh/command/{n2}/1/f-dev/wanted"));
    assert_eq!(m.payload["action"], "command/insert");
    let m = updates.msg().await;
    assert_eq!(m.topic, format!("dh/command_update/{n2}/1/f-dev/wanted"));
    assert_eq!(m.payload["action"], "command/update");
    assert_eq!(m.payload["command"]["status"], "s1");
    inserts.quiet(QUIET).await;
    updates.quiet(Duration::ZERO).await;
    by_name.quiet(Duration::ZERO).await;
}

// ---------------------------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------------------------

/// What an admin sees of network B, to prove nothing of it changed.
async fn snapshot_of_b(hub: &TestHub, net_b: i64) -> Value {
    let a = &hub.admin;
    json!({
        "device": hub.get(a, "/device/b-dev").await.expect(200),
        "network": hub.get(a, &format!("/network/{net_b}")).await.expect(200),
        "notifications": hub.get(a, "/device/b-dev/notification?sortOrder=ASC").await.expect(200),
        "commands": hub.get(a, "/device/b-dev/command?sortOrder=ASC").await.expect(200),
        "devices": hub.get(a, &format!("/device?networkId={net_b}")).await.expect(200),
    })
}

#[tokio::test]
async fn clients_and_anonymous_sessions_never_see_or_touch_another_network() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let net_a = hub.network("net-a").await;
    let net_b = hub.network("net-b").await;
    hub.device("a-dev", net_a).await;
    hub.device("b-dev", net_b).await;
    let b_cmd = hub.post(&hub.admin, "/device/b-dev/command", json!({"command": "b-cmd"})).await.expect(201)["id"]
        .as_i64()
        .unwrap();
    hub.client_user("alice", &[net_a]).await;
    let mut alice = Mqtt::login(&hub, "alice", "alice", CLIENT_PASSWORD).await;
    let mut anon = Mqtt::anonymous(&hub, "anon").await;
    // The victim: an admin session whose private and response topics the others aim at.
    let mut victim = Mqtt::login(&hub, "victim", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(victim.subscribe("dh/notification/#@victim").await, GRANTED);
    assert_eq!(victim.subscribe("dh/command/#@victim").await, GRANTED);
    assert_eq!(victim.subscribe("dh/command_update/#@victim").await, GRANTED);
    for action in ["notification/insert", "x", "token", "authenticate"] {
        assert_eq!(victim.subscribe(&format!("dh/response/{action}@victim")).await, GRANTED);
    }
    let before = snapshot_of_b(&hub, net_b).await;

    // Subscriptions: (filter, alice's code, anonymous code).
    let b_dev_filters = [
        format!("dh/notification/{net_b}/#"),
        format!("dh/notification/{net_b}/+/+/#"),
        format!("dh/notification/{net_b}"),
        "dh/notification/+/+/b-dev/#".to_string(),
        format!("dh/notification/{net_a}/1/b-dev/#"),
        "dh/notification/+/+/b-dev".to_string(),
        "dh/command/+/+/b-dev/#".to_string(),
        format!("dh/command/{net_b}/#"),
        format!("dh/command_update/{net_b}/#"),
        "dh/command_update/+/+/b-dev/#".to_string(),
    ];
    let mut cases: Vec<(String, SubscribeReasonCode, SubscribeReasonCode)> = vec![
        ("#".into(), GRANTED, GRANTED),
        ("+/#".into(), GRANTED, GRANTED),
        ("+/notification/#".into(), GRANTED, GRANTED),
        ("+/+/+/+/+/+".into(), GRANTED, GRANTED),
        ("dh/#".into(), REFUSED, REFUSED),
        ("dh/+/#".into(), REFUSED, REFUSED),
        ("dh/notification/#".into(), GRANTED, REFUSED),
        ("dh/notification/+/+/+/#".into(), GRANTED, REFUSED),
        ("dh/command/#".into(), GRANTED, REFUSED),
        ("dh/command_update/#".into(), GRANTED, REFUSED),
        ("dh/notification/#@victim".into(), REFUSED, REFUSED),
        ("dh/command/#@victim".into(), REFUSED, REFUSED),
        ("dh/command_update/#@victim".into(), REFUSED, REFUSED),
        ("dh/response/x@victim".into(), REFUSED, REFUSED),
        ("dh/response/notification/insert@victim".into(), REFUSED, REFUSED),
        ("dh/response/token@victim".into(), REFUSED, REFUSED),
        ("dh/response/authenticate@victim".into(), REFUSED, REFUSED),
        ("dh/response/+@victim".into(), REFUSED, REFUSED),
        ("dh/response/#".into(), REFUSED, REFUSED),
        ("dh/request".into(), REFUSED, REFUSED),
        ("dh/request/#".into(), REFUSED, REFUSED),
    ];
    for f in b_dev_filters {
        cases.push((f, REFUSED, REFUSED));
    }
    for (filter, for_alice, for_anon) in &cases {
        assert_eq!(alice.subscribe(filter).await, *for_alice, "alice: {filter}");
        assert_eq!(anon.subscribe(filter).await, *for_anon, "anonymous: {filter}");
    }

    // Alice's requests against B: exact errors.
    let b_target_errors: Vec<(&str, Value, u16, String)> = vec![
        (
            "notification/insert",
            json!({"deviceId": "b-dev", "notification": {"notification": "hack"}}),
            403,
            "Access is denied".into(),
        ),
        (
            "command/insert",
            json!({"deviceId": "b-dev", "command": {"command": "hack"}}),
            403,
            "Access is denied".into(),
        ),
        (
            "command/update",
            json!({"deviceId": "b-dev", "commandId": b_cmd, "command": {"status": "hacked"}}),
            403,
            "Access is denied".into(),
        ),
        (
            "command/update",
            json!({"deviceId": "a-dev", "commandId": b_cmd, "command": {"status": "hacked"}}),
            404,
            format!("Command with id = {b_cmd} not found"),
        ),
        ("command/get", json!({"deviceId": "b-dev", "commandId": b_cmd}), 403, "Access is denied".into()),
        ("device/get", json!({"deviceId": "b-dev"}), 403, "Access is denied".into()),
        ("device/delete", json!({"deviceId": "b-dev"}), 403, "Access is denied".into()),
        ("device/save", json!({"deviceId": "b-dev", "device": {"name": "pwned"}}), 403, "No access to device".into()),
        (
            "device/save",
            json!({"deviceId": "b-dev", "device": {"name": "pwned", "networkId": net_a}}),
            403,
            "No access to device".into(),
        ),
        (
            "device/save",
            json!({"deviceId": "new-in-b", "device": {"name": "pwned", "networkId": net_b}}),
            403,
            "No access to network!".into(),
        ),
        ("notification/list", json!({"deviceId": "b-dev"}), 403, "Access is denied".into()),
        ("notification/subscribe", json!({"deviceId": "b-dev"}), 403, "Access is denied".into()),
        ("network/update", json!({"networkId": net_b, "network": {"name": "pwned"}}), 403, "Access is denied".into()),
        ("network/delete", json!({"networkId": net_b}), 403, "Access is denied".into()),
    ];
    for (action, fields, code, message) in &b_target_errors {
        alice.err(action, fields.clone(), *code, message).await;
    }
    let list = alice.ok("device/list", json!({}), &["devices"]).await;
    assert_eq!(list["devices"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["devices"][0]["id"], "a-dev");
    let nets = alice.ok("network/list", json!({}), &["networks"]).await;
    assert_eq!(nets["networks"].as_array().unwrap().len(), 1, "{nets}");

    // The same requests from the anonymous session (it cannot even see the answers), and direct
    // publishes to every kind of topic from both.
    for (action, fields, _, _) in &b_target_errors {
        let mut req = fields.clone();
        req["action"] = json!(action);
        anon.publish_json("dh/request", req).await;
    }
    let direct: Vec<(String, Value)> = vec![
        (format!("dh/notification/{net_b}/1/b-dev/x-direct"), json!({"parameters": {"fake": 1}})),
        (format!("dh/notification/{net_a}/1/b-dev/x-direct"), json!({"fake": 2})),
        ("dh/notification/b-dev".into(), json!({"notification": "x-direct"})),
        (format!("dh/notification/{net_b}/1/b-dev/x-direct@victim"), json!({"fake": 3})),
        (format!("dh/command/{net_b}/1/b-dev/x-command"), json!({"parameters": {"fake": 4}})),
        (
            format!("dh/command_update/{net_b}/1/b-dev/b-cmd"),
            json!({"id": b_cmd, "status": "hacked", "result": {"fake": 5}}),
        ),
        (format!("dh/command_update/{net_a}/1/a-dev/b-cmd"), json!({"id": b_cmd, "status": "hacked"})),
        (
            "dh/response/notification/insert@victim".into(),
            json!({"action": "notification/insert", "status": "success", "fake": 6}),
        ),
        ("dh/response/x@victim".into(), json!({"fake": 7})),
        ("dh/response/token@victim".into(), json!({"accessToken": "fake"})),
        ("dh/request@victim".into(), json!({"action": "server/info", "fake": 8})),
        ("dh/anything/else".into(), json!({"fake": 9})),
        ("dh/".into(), json!({"fake": 10})),
        ("plain/b".into(), json!({"plain": true})),
    ];
    for (topic, payload) in &direct {
        alice.publish_json(topic, payload.clone()).await;
        anon.publish_json(topic, payload.clone()).await;
    }

    // Traffic of both networks; only A's may reach alice, nothing reaches the anonymous session
    // except plain topics.
    hub.post(&hub.admin, "/device/b-dev/notification", json!({"notification": "b-secret"})).await.expect(201);
    let b_cmd2 = hub.post(&hub.admin, "/device/b-dev/command", json!({"command": "b-cmd2"})).await.expect(201)["id"]
        .as_i64()
        .unwrap();
    hub.put(&hub.admin, &format!("/device/b-dev/command/{b_cmd2}"), json!({"status": "b-status"})).await.expect(204);
    hub.post(&hub.admin, "/device/a-dev/notification", json!({"notification": "a-visible"})).await.expect(201);

    let leaks = |ms: &[Msg]| -> Vec<String> {
        ms.iter()
            .filter(|m| {
                let text = format!("{} {}", m.topic, String::from_utf8_lossy(&m.raw));
                text.contains("b-dev") || text.contains("b-secret") || text.contains("b-cmd")
            })
            .map(|m| format!("{} {}", m.topic, m.payload))
            .collect()
    };
    let alice_got = alice.drain(QUIET).await;
    assert_eq!(leaks(&alice_got), Vec::<String>::new());
    let a_pushes: Vec<&Msg> = alice_got.iter().filter(|m| m.topic.starts_with("dh/")).collect();
    assert_eq!(a_pushes.len(), 1, "{alice_got:?}");
    assert_eq!(a_pushes[0].topic, format!("dh/notification/{net_a}/1/a-dev/a-visible"));
    // Plain topics are plain MQTT: both saw both plain publishes (alice's and the anonymous one).
    // "#" and "+/#" both match; MQTT 3.1.1 §3.3.5 allows one copy per matching filter (rumqttd's
    // router sends them) as well as a single copy.
    let plain: Vec<&Msg> = alice_got.iter().filter(|m| !m.topic.starts_with("dh/")).collect();
    assert!(matches!(plain.len(), 2 | 4), "{alice_got:?}");
    assert!(plain.iter().all(|m| m.topic == "plain/b" && m.payload == json!({"plain": true})), "{plain:?}");
    let anon_got = anon.drain(Duration::from_millis(100)).await;
    assert_eq!(leaks(&anon_got), Vec::<String>::new());
    assert!(anon_got.iter().all(|m| m.topic == "plain/b"), "{anon_got:?}");
    assert!(matches!(anon_got.len(), 2 | 4), "{anon_got:?}");

    // The victim got B's real traffic on its private topics and none of the forged messages.
    let victim_got = victim.drain(Duration::from_millis(100)).await;
    let topics: Vec<&str> = victim_got.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            format!("dh/notification/{net_b}/1/b-dev/b-secret@victim"),
            format!("dh/command/{net_b}/1/b-dev/b-cmd2@victim"),
            format!("dh/command_update/{net_b}/1/b-dev/b-cmd2@victim"),
            format!("dh/notification/{net_a}/1/a-dev/a-visible@victim"),
        ],
        "{victim_got:?}"
    );

    // Nothing of B changed beyond the admin's own traffic.
    let after = snapshot_of_b(&hub, net_b).await;
    assert_eq!(after["device"], before["device"]);
    assert_eq!(after["network"], before["network"]);
    assert_eq!(after["devices"], before["devices"]);
    let mut expected_names: Vec<Value> =
        before["notifications"].as_array().unwrap().iter().map(|n| n["notification"].clone()).collect();
    expected_names.push(json!("b-secret"));
    let names: Vec<Value> =
        after["notifications"].as_array().unwrap().iter().map(|n| n["notification"].clone()).collect();
    assert_eq!(names, expected_names);
    let commands = after["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert_eq!(commands[0], before["commands"][0]);
    assert_eq!(commands[1]["command"], "b-cmd2");
    assert_eq!(commands[1]["status"], "b-status");
    hub.get(&hub.admin, "/device/new-in-b").await.expect(404);
    // A's device got nothing from the forged updates either.
    let a_commands = hub.get(&hub.admin, "/device/a-dev/command").await.expect(200);
    assert_eq!(a_commands, json!([]));
}

// ---------------------------------------------------------------------------------------------
// Plain topics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn plain_topics_open_by_default_with_retained_messages() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut anon = Mqtt::anonymous(&hub, "plain-anon").await;
    let mut admin = Mqtt::login(&hub, "plain-admin", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(admin.subscribe("sensors/#").await, GRANTED);
    anon.publish("sensors/t1", "21.5", QoS::AtLeastOnce).await;
    let m = admin.msg().await;
    assert_eq!((m.topic.as_str(), &m.raw[..]), ("sensors/t1", &b"21.5"[..]));
    assert_eq!(m.qos, QoS::AtLeastOnce);

    anon.client.publish("sensors/retained", QoS::AtLeastOnce, true, "kept").await.unwrap();
    let m = admin.msg().await;
    assert_eq!(m.topic, "sensors/retained");
    assert_eq!(anon.subscribe("sensors/retained").await, GRANTED);
    let m = anon.msg().await;
    assert_eq!((m.topic.as_str(), &m.raw[..]), ("sensors/retained", &b"kept"[..]));
    admin.quiet(QUIET).await;
}

#[tokio::test]
async fn plain_topics_for_authenticated_sessions_only() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.mqtt.plain_topics = hivehub::config::PlainTopics::Authenticated).await;
    let mut anon = Mqtt::anonymous(&hub, "auth-anon").await;
    let mut admin = Mqtt::login(&hub, "auth-admin", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    for f in ["plain/#", "#", "+/x"] {
        assert_eq!(anon.subscribe(f).await, REFUSED, "{f}");
    }
    assert_eq!(admin.subscribe("plain/#").await, GRANTED);
    anon.publish("plain/from-anon", "x", QoS::AtLeastOnce).await;
    anon.publish("plain/from-anon", "x", QoS::AtMostOnce).await;
    admin.quiet(QUIET).await;
    admin.publish("plain/from-admin", "y", QoS::AtLeastOnce).await;
    assert_eq!(admin.msg().await.topic, "plain/from-admin");

    // Once authenticated over dh/request, the anonymous session may use plain topics.
    assert_eq!(anon.subscribe("dh/response/authenticate@auth-anon").await, GRANTED);
    anon.responses.insert("dh/response/authenticate@auth-anon".into());
    anon.ok("authenticate", json!({"token": hub.admin}), &[]).await;
    assert_eq!(anon.subscribe("plain/#").await, GRANTED);
    anon.publish("plain/now-allowed", "z", QoS::AtLeastOnce).await;
    assert_eq!(admin.msg().await.topic, "plain/now-allowed");
    assert_eq!(anon.msg().await.topic, "plain/now-allowed");
}

#[tokio::test]
async fn plain_topics_off() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.mqtt.plain_topics = hivehub::config::PlainTopics::Off).await;
    let mut admin = Mqtt::login(&hub, "off-admin", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    let mut anon = Mqtt::anonymous(&hub, "off-anon").await;
    for f in ["plain/#", "#", "x"] {
        assert_eq!(admin.subscribe(f).await, REFUSED, "{f}");
        assert_eq!(anon.subscribe(f).await, REFUSED, "{f}");
    }
    admin.publish("plain/x", "1", QoS::AtLeastOnce).await;
    anon.publish("plain/x", "1", QoS::AtLeastOnce).await;
    // dh/ topics are unaffected.
    assert_eq!(admin.subscribe("dh/notification/#").await, GRANTED);
    admin.ok("server/info", json!({}), &["info"]).await;
    admin.quiet(QUIET).await;
}

// ---------------------------------------------------------------------------------------------
// Hostile input and session takeover
// ---------------------------------------------------------------------------------------------

fn mqtt_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A CONNECT built by hand: protocol name and level as given.
fn connect_packet(name: &str, level: u8, client_id: &str, credentials: Option<(&str, &str)>) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(&mut body, name.as_bytes());
    body.push(level);
    let mut flags = 0x02; // clean session
    if credentials.is_some() {
        flags |= 0xc0;
    }
    body.push(flags);
    body.extend_from_slice(&30u16.to_be_bytes());
    mqtt_str(&mut body, client_id.as_bytes());
    if let Some((u, p)) = credentials {
        mqtt_str(&mut body, u.as_bytes());
        mqtt_str(&mut body, p.as_bytes());
    }
    let mut out = vec![0x10];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

/// A raw TCP connection to the broker.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(hub: &TestHub) -> Raw {
        Raw { stream: TcpStream::connect(hub.mqtt_addr()).await.unwrap(), buf: BytesMut::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The hub may already have closed the socket; that is fine.
        let _ = self.stream.write_all(bytes).await;
    }

    async fn send_packet(&mut self, p: &Wire) {
        let mut out = BytesMut::new();
        codec::encode(p, &mut out);
        self.send(&out).await;
    }

    /// The next packet from the hub; `None` when the connection closed (or 5 s passed).
    async fn packet(&mut self) -> Option<Wire> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(p)) = codec::decode(&mut self.buf, 1 << 20) {
                return Some(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Reads until the hub closes the connection; returns the packets it sent before. Panics when
    /// the connection is still open after 5 s.
    async fn until_closed(&mut self) -> Vec<Wire> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut packets = Vec::new();
        loop {
            while let Ok(Some(p)) = codec::decode(&mut self.buf, 1 << 20) {
                packets.push(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => panic!("connection still open; received {packets:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return packets,
                Ok(Ok(_)) => {}
            }
        }
    }
}

fn connack_code(code: u8) -> Wire {
    Wire::ConnAck { session_present: false, code }
}

#[tokio::test]
async fn hostile_input_never_crashes_the_hub() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut steady = Mqtt::login(&hub, "steady", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(steady.subscribe("dh/notification/#").await, GRANTED);

    // Garbage before or instead of CONNECT: closed without an answer.
    let mut noise = Vec::with_capacity(4096);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push((x >> 24) as u8);
    }
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", noise),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bad remaining length", vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        ("oversized CONNECT", vec![0x10, 0xff, 0xff, 0xff, 0x7f]),
        ("PUBLISH before CONNECT", vec![0x30, 0x05, 0x00, 0x01, b'a', b'h', b'i']),
        ("PINGREQ before CONNECT", vec![0xc0, 0x00]),
        ("bad protocol name", connect_packet("XYZW", 4, "raw-x", None)),
        ("truncated CONNECT", vec![0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x1e, 0x00, 0x05]),
        ("CONNECT with reserved flag", {
            let mut p = connect_packet("MQTT", 4, "raw-r", None);
            p[9] |= 1;
            p
        }),
    ];
    for (what, bytes) in &garbage {
        let mut raw = Raw::open(&hub).await;
        raw.send(bytes).await;
        // The client stops sending (a partial packet must not keep the connection forever).
        let _ = raw.stream.shutdown().await;
        let got = raw.until_closed().await;
        assert_eq!(got, Vec::<Wire>::new(), "{what}");
    }

    // Protocol level 5 (and other levels): CONNACK 1, then closed.
    for (name, level) in [("MQTT", 5u8), ("MQTT", 3), ("MQIsdp", 4), ("MQTT", 0)] {
        let mut raw = Raw::open(&hub).await;
        raw.send(&connect_packet(name, level, "raw-v", Some((ADMIN_LOGIN, ADMIN_PASSWORD)))).await;
        assert_eq!(raw.until_closed().await, [connack_code(1)], "{name} level {level}");
    }

    // Client ids the hub cannot take: CONNACK 2.
    let long_id = "i".repeat(300);
    for id in ["with/slash", "with+plus", "with#hash", "with@at", long_id.as_str()] {
        let mut raw = Raw::open(&hub).await;
        raw.send(&connect_packet("MQTT", 4, id, None)).await;
        assert_eq!(raw.until_closed().await, [connack_code(2)], "{id}");
    }
    // An empty id with a clean session gets a generated one.
    let mut raw = Raw::open(&hub).await;
    raw.send(&connect_packet("MQTT", 4, "", None)).await;
    assert_eq!(raw.packet().await, Some(connack_code(0)));
    raw.send_packet(&Wire::PingReq).await;
    assert_eq!(raw.packet().await, Some(Wire::PingResp));
    // A username without a password: bad credentials.
    let mut raw = Raw::open(&hub).await;
    let mut p = connect_packet("MQTT", 4, "raw-u", Some((ADMIN_LOGIN, "")));
    p[9] &= !0x40;
    let len = p.len();
    p.truncate(len - 2);
    p[1] -= 2;
    raw.send(&p).await;
    assert_eq!(raw.until_closed().await, [connack_code(4)]);

    // MQTT 3.1 ("MQIsdp", level 3) works: CONNECT, SUBSCRIBE, a request and its response.
    let mut raw = Raw::open(&hub).await;
    raw.send(&connect_packet("MQIsdp", 3, "raw-31", Some((ADMIN_LOGIN, ADMIN_PASSWORD)))).await;
    assert_eq!(raw.packet().await, Some(connack_code(0)));
    raw.send_packet(&Wire::Subscribe {
        pkid: 9,
        filters: vec![("dh/response/server/info@raw-31".into(), 1), ("dh/request".into(), 0)],
    })
    .await;
    assert_eq!(raw.packet().await, Some(Wire::SubAck { pkid: 9, codes: vec![1, 0x80] }));
    raw.send_packet(&Wire::Publish(codec::Publish {
        dup: false,
        qos: 1,
        retain: false,
        topic: "dh/request".into(),
        pkid: 77,
        payload: Bytes::from(json!({"action": "server/info", "requestId": 31}).to_string()),
    }))
    .await;
    let mut got = vec![raw.packet().await.unwrap(), raw.packet().await.unwrap()];
    got.sort_by_key(|p| matches!(p, Wire::PubAck(_)));
    assert_eq!(got[1], Wire::PubAck(77));
    let Wire::Publish(resp) = &got[0] else {
        panic!("expected the response, got {got:?}");
    };
    assert_eq!(resp.topic, "dh/response/server/info@raw-31");
    assert_eq!(resp.qos, 1);
    let body: Value = serde_json::from_slice(&resp.payload).unwrap();
    assert_eq!(body["requestId"], 31);
    assert_eq!(body["status"], "success");
    raw.send_packet(&Wire::PubAck(resp.pkid)).await;
    // A publish with QoS 3 is a protocol violation: the connection is closed.
    raw.send(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]).await;
    assert_eq!(raw.until_closed().await, Vec::<Wire>::new());

    // Protocol violations after CONNECT: a second CONNECT, SUBSCRIBE without filters, a packet
    // only a server sends, a reserved packet type, a PUBLISH whose topic runs past its end.
    let violations: Vec<(&str, Vec<u8>)> = vec![
        ("second CONNECT", connect_packet("MQTT", 4, "again", None)),
        ("empty SUBSCRIBE", vec![0x82, 0x02, 0x00, 0x01]),
        ("CONNACK from client", vec![0x20, 0x02, 0x00, 0x00]),
        ("reserved type", vec![0xf0, 0x00]),
        ("topic past the end", vec![0x30, 0x02, 0xff, 0xff]),
        ("invalid UTF-8 topic", vec![0x30, 0x04, 0x00, 0x02, 0xc3, 0x28]),
    ];
    for (i, (what, bytes)) in violations.iter().enumerate() {
        let mut raw = Raw::open(&hub).await;
        raw.send(&connect_packet("MQTT", 4, &format!("raw-violation-{i}"), None)).await;
        assert_eq!(raw.packet().await, Some(connack_code(0)), "{what}");
        raw.send(bytes).await;
        assert_eq!(raw.until_closed().await, Vec::<Wire>::new(), "{what}");
    }

    // A client that connects and vanishes mid-packet, many times over.
    for i in 0..50 {
        let mut raw = Raw::open(&hub).await;
        let p = connect_packet("MQTT", 4, &format!("vanish-{i}"), Some((ADMIN_LOGIN, ADMIN_PASSWORD)));
        raw.send(&p[..p.len() / 2]).await;
    }

    // The hub is still serving: the steady session, REST, and new connections.
    steady.ok("server/info", json!({}), &["info"]).await;
    hub.post(&hub.admin, &format!("/device/{SAMPLE_DEVICE}/notification"), json!({"notification": "still-alive"}))
        .await
        .expect(201);
    assert_eq!(steady.msg().await.topic, format!("dh/notification/1/1/{SAMPLE_DEVICE}/still-alive"));
    let mut fresh = Mqtt::login(&hub, "fresh", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    fresh.ok("server/info", json!({}), &["info"]).await;
    steady.quiet(QUIET).await;
}

#[tokio::test]
async fn a_second_connect_with_the_same_client_id_takes_over() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut first = Mqtt::login(&hub, "same-id", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(first.subscribe("dh/notification/#").await, GRANTED);
    first.ok("server/info", json!({}), &["info"]).await;
    let mut second = Mqtt::login(&hub, "same-id", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert!(first.closed_within(Duration::from_secs(5)).await, "old session still open");
    second.ok("server/info", json!({}), &["info"]).await;
    // The new session starts without the old one's subscriptions.
    let subs = second.ok("subscription/list", json!({}), &["subscriptions"]).await;
    assert_eq!(subs["subscriptions"], json!([]));
    assert_eq!(second.subscribe("dh/notification/#").await, GRANTED);
    hub.post(&hub.admin, &format!("/device/{SAMPLE_DEVICE}/notification"), json!({"notification": "after-takeover"}))
        .await
        .expect(201);
    assert_eq!(second.msg().await.payload["notification"]["notification"], "after-takeover");
    second.quiet(QUIET).await;
}

// ---------------------------------------------------------------------------------------------
// Many sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_device_sessions() {
    skip_unless_backend!();
    const DEVICES: usize = 1000;
    const BATCH: usize = 100;
    let started = Instant::now();
    let hub = TestHub::start().await;
    let net = hub.network("fleet").await;
    let (_, token) = hub.client_user("fleet-user", &[net]).await;
    let http = hub.client.clone();
    let base = hub.base.clone();
    let admin = hub.admin.clone();

    // Register the devices, a batch at a time.
    for batch in (0..DEVICES).collect::<Vec<_>>().chunks(BATCH) {
        let mut tasks = JoinSet::new();
        for &i in batch {
            let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
            tasks.spawn(async move {
                let r = http
                    .put(format!("{base}/device/fleet-{i}"))
                    .bearer_auth(admin)
                    .header("content-type", "application/json")
                    .body(json!({"name": format!("fleet-{i}"), "networkId": net}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 204);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    }

    // Connect the device sessions (client id = device id, as devices do) in parallel batches; each
    // subscribes to its own commands and to the fleet's broadcast notifications.
    let mut sessions: Vec<Option<Mqtt>> = (0..DEVICES).map(|_| None).collect();
    for batch in (0..DEVICES).collect::<Vec<_>>().chunks(BATCH) {
        let mut tasks = JoinSet::new();
        for &i in batch {
            let mut o = options(&hub, &format!("fleet-{i}"));
            o.set_credentials("device", token.clone());
            tasks.spawn(async move {
                let mut m = Mqtt::connect(o).await;
                assert_eq!(m.subscribe(&format!("dh/command/+/+/fleet-{i}/#")).await, GRANTED);
                assert_eq!(m.subscribe(&format!("dh/notification/{net}/+/+/broadcast")).await, GRANTED);
                (i, m)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (i, m) = r.unwrap();
            sessions[i] = Some(m);
        }
    }
    let mut sessions: Vec<Mqtt> = sessions.into_iter().map(Option::unwrap).collect();
    let connected = started.elapsed();

    // One command per device over REST, and one notification for all.
    for batch in (0..DEVICES).collect::<Vec<_>>().chunks(BATCH) {
        let mut tasks = JoinSet::new();
        for &i in batch {
            let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
            tasks.spawn(async move {
                let r = http
                    .post(format!("{base}/device/fleet-{i}/command"))
                    .bearer_auth(admin)
                    .header("content-type", "application/json")
                    .body(json!({"command": format!("ping-{i}")}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    }
    hub.post(&hub.admin, "/device/fleet-0/notification", json!({"notification": "broadcast"})).await.expect(201);

    for (i, m) in sessions.iter_mut().enumerate() {
        let mut command = None;
        let mut broadcast = None;
        while command.is_none() || broadcast.is_none() {
            let msg = m
                .recv_within(Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("fleet-{i}: command {command:?}, broadcast {broadcast:?}"));
            if msg.topic.starts_with("dh/command/") {
                assert!(command.is_none(), "fleet-{i}: second command {}", msg.topic);
                command = Some(msg);
            } else {
                assert!(broadcast.is_none(), "fleet-{i}: second notification {}", msg.topic);
                broadcast = Some(msg);
            }
        }
        let command = command.unwrap();
        assert_eq!(command.topic, format!("dh/command/{net}/1/fleet-{i}/ping-{i}"));
        assert_eq!(command.qos, QoS::AtLeastOnce);
        assert_eq!(command.payload["command"]["deviceId"], format!("fleet-{i}"));
        assert_eq!(broadcast.unwrap().topic, format!("dh/notification/{net}/1/fleet-0/broadcast"));
    }
    // Nobody got anything else.
    for m in sessions.iter_mut().step_by(37) {
        m.quiet(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{DEVICES} device sessions: connected and subscribed after {connected:?}, all delivered after {:?}",
        started.elapsed()
    );
    for m in sessions {
        m.disconnect().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol details
// ---------------------------------------------------------------------------------------------

/// Opens a raw 3.1.1 session and waits for its CONNACK code.
async fn raw_session(hub: &TestHub, id: &str, credentials: Option<(&str, &str)>) -> Raw {
    let mut raw = Raw::open(hub).await;
    raw.send(&connect_packet("MQTT", 4, id, credentials)).await;
    assert_eq!(raw.packet().await, Some(connack_code(0)), "{id}");
    raw
}

#[tokio::test]
async fn one_subscribe_packet_mixing_plain_and_dh_filters_gets_one_suback() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.mqtt.plain_topics = hivehub::config::PlainTopics::Authenticated).await;
    let filters = vec![
        ("plain/a".to_string(), 1u8),
        ("dh/notification/#".to_string(), 0),
        ("dh/request".to_string(), 1),
        ("plain/b/+".to_string(), 0),
        ("dh/response/server/info@raw-mixed".to_string(), 2),
        ("plain/c".to_string(), 2),
    ];
    let mut raw = raw_session(&hub, "raw-mixed", Some((ADMIN_LOGIN, ADMIN_PASSWORD))).await;
    raw.send_packet(&Wire::Subscribe { pkid: 4242, filters: filters.clone() }).await;
    // Granted QoS is at most 1; the codes keep the order of the filters.
    assert_eq!(raw.packet().await, Some(Wire::SubAck { pkid: 4242, codes: vec![1, 0, 0x80, 0, 1, 1] }));
    raw.send_packet(&Wire::Unsubscribe { pkid: 4243, filters: filters.iter().map(|(f, _)| f.clone()).collect() }).await;
    assert_eq!(raw.packet().await, Some(Wire::UnsubAck(4243)));

    // The anonymous session under `authenticated`: only its token response topic is granted.
    let mut anon = raw_session(&hub, "raw-anon", None).await;
    anon.send_packet(&Wire::Subscribe {
        pkid: 7,
        filters: vec![("plain/a".into(), 1), ("dh/response/token@raw-anon".into(), 1), ("dh/notification/#".into(), 1)],
    })
    .await;
    assert_eq!(anon.packet().await, Some(Wire::SubAck { pkid: 7, codes: vec![0x80, 1, 0x80] }));
}

#[tokio::test]
async fn interleaved_plain_and_hub_qos1_traffic_keeps_packet_ids_apart() {
    skip_unless_backend!();
    const N: usize = 200;
    let hub = TestHub::start().await;
    let mut sub = Mqtt::login(&hub, "flood-sub", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(sub.subscribe("flood/#").await, GRANTED);
    assert_eq!(sub.subscribe(&format!("dh/notification/+/+/{SAMPLE_DEVICE}/flood")).await, GRANTED);
    let mut publisher = Mqtt::anonymous(&hub, "flood-pub").await;
    let (_, ()) = tokio::join!(
        async {
            for i in 0..N {
                hub.post(
                    &hub.admin,
                    &format!("/device/{SAMPLE_DEVICE}/notification"),
                    json!({"notification": "flood", "parameters": {"i": i}}),
                )
                .await
                .expect(201);
            }
        },
        async {
            for i in 0..N {
                publisher.publish(&format!("flood/{i}"), json!({"i": i}).to_string(), QoS::AtLeastOnce).await;
            }
        }
    );
    let mut plain = Vec::new();
    let mut pushed = Vec::new();
    while plain.len() + pushed.len() < 2 * N {
        let m = sub.msg().await;
        assert_eq!(m.qos, QoS::AtLeastOnce);
        if m.topic.starts_with("flood/") {
            plain.push(m.payload["i"].as_u64().unwrap());
        } else {
            pushed.push(m.payload["notification"]["parameters"]["i"].as_u64().unwrap());
        }
    }
    // Each source in order, nothing lost or repeated (a PUBACK routed to the wrong source would
    // stall or repeat the router's deliveries).
    let expected: Vec<u64> = (0..N as u64).collect();
    assert_eq!(plain, expected);
    assert_eq!(pushed, expected);
    sub.quiet(QUIET).await;
}

#[tokio::test]
async fn keepalive_oversized_packets_and_qos2_do_not_harm_other_sessions() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut steady = Mqtt::login(&hub, "ka-steady", ADMIN_LOGIN, ADMIN_PASSWORD).await;

    // Keepalive 1 s and silence: closed after 1.5 s.
    let mut raw = Raw::open(&hub).await;
    let mut p = connect_packet("MQTT", 4, "ka-silent", None);
    p[10..12].copy_from_slice(&1u16.to_be_bytes());
    raw.send(&p).await;
    assert_eq!(raw.packet().await, Some(connack_code(0)));
    let t = Instant::now();
    assert_eq!(raw.until_closed().await, Vec::<Wire>::new());
    assert!(t.elapsed() >= Duration::from_millis(1000), "{:?}", t.elapsed());

    // A packet over the size limit closes that connection only.
    let mut raw = raw_session(&hub, "too-big", Some((ADMIN_LOGIN, ADMIN_PASSWORD))).await;
    raw.send_packet(&Wire::Publish(codec::Publish {
        dup: false,
        qos: 0,
        retain: false,
        topic: "dh/request".into(),
        pkid: 0,
        payload: Bytes::from(vec![b' '; 300 * 1024]),
    }))
    .await;
    assert_eq!(raw.until_closed().await, Vec::<Wire>::new());

    // QoS 2 publishes on dh/ topics are handled exactly once: stored, PUBREC, then PUBREL → PUBCOMP.
    let mut raw = raw_session(&hub, "qos2", Some((ADMIN_LOGIN, ADMIN_PASSWORD))).await;
    raw.send_packet(&Wire::Publish(codec::Publish {
        dup: false,
        qos: 2,
        retain: false,
        topic: format!("dh/notification/1/1/{SAMPLE_DEVICE}/qos2"),
        pkid: 5,
        payload: Bytes::from_static(b"{}"),
    }))
    .await;
    assert_eq!(raw.packet().await, Some(Wire::PubRec(5)));
    assert!(notification_names(&hub, SAMPLE_DEVICE).await.contains(&"qos2".to_string()));
    raw.send_packet(&Wire::PubRel(5)).await;
    assert_eq!(raw.packet().await, Some(Wire::PubComp(5)));
    raw.send_packet(&Wire::PingReq).await;
    assert_eq!(raw.packet().await, Some(Wire::PingResp));
    let stored = notification_names(&hub, SAMPLE_DEVICE).await;
    assert_eq!(stored.iter().filter(|n| *n == "qos2").count(), 1, "{stored:?}");

    steady.ok("server/info", json!({}), &["info"]).await;
}

#[tokio::test]
async fn retained_flag_on_dh_topics_stores_but_is_never_replayed() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut device = Mqtt::login(&hub, "ret-dev", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    device
        .client
        .publish(
            format!("dh/notification/1/1/{SAMPLE_DEVICE}/retained"),
            QoS::AtLeastOnce,
            true,
            json!({"parameters": {"r": 1}}).to_string(),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), device.puback.recv()).await.unwrap().unwrap();
    assert_eq!(notification_names(&hub, SAMPLE_DEVICE).await.iter().filter(|n| *n == "retained").count(), 1);
    let mut late = Mqtt::login(&hub, "ret-late", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(late.subscribe("dh/notification/#").await, GRANTED);
    assert_eq!(late.subscribe("#").await, GRANTED);
    late.quiet(QUIET).await;
}

#[tokio::test]
async fn pushed_topics_are_valid_mqtt_topic_names_whatever_the_message_name() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut m = Mqtt::login(&hub, "names", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(m.subscribe("dh/notification/#").await, GRANTED);
    assert_eq!(m.subscribe("dh/command/#").await, GRANTED);
    // Wildcards and U+0000 are percent-encoded; `/` stays, as in the reference.
    for (name, level) in
        [("a+b", "a%2Bb"), ("#", "%23"), ("x/#", "x/%23"), ("nul\u{0}byte", "nul%00byte"), ("plain", "plain")]
    {
        hub.post(&hub.admin, &format!("/device/{SAMPLE_DEVICE}/notification"), json!({"notification": name}))
            .await
            .expect(201);
        hub.post(&hub.admin, &format!("/device/{SAMPLE_DEVICE}/command"), json!({"command": name})).await.expect(201);
        for kind in ["notification", "command"] {
            let got = m.msg().await;
            // MQTT 3.1.1 §4.7.1 / §4.7.3: topic names carry no wildcards and no U+0000; strict
            // clients drop the connection on such a PUBLISH.
            assert_eq!(got.topic, format!("dh/{kind}/1/1/{SAMPLE_DEVICE}/{level}"), "{name:?}");
            assert_eq!(got.payload[kind][kind], name);
        }
    }
    m.quiet(QUIET).await;
}

// ---------------------------------------------------------------------------------------------
// Revocation and protocol edge cases
// ---------------------------------------------------------------------------------------------

/// The name of the next notification pushed to `s`, skipping presence (`$device-...`) ones.
async fn next_notification_name(s: &mut Mqtt) -> String {
    loop {
        let name = s.msg().await.payload["notification"]["notification"].as_str().unwrap_or_default().to_string();
        if !name.starts_with("$device-") {
            return name;
        }
    }
}

/// Asserts that nothing but presence notifications reaches `s` for `QUIET`.
async fn only_presence_arrives(s: &mut Mqtt) {
    for m in s.drain(QUIET).await {
        let name = m.payload["notification"]["notification"].as_str().unwrap_or_default().to_string();
        assert!(name.starts_with("$device-"), "{}: unexpected publish {}", s.id, m.payload);
    }
}

#[tokio::test]
async fn locking_or_deleting_a_user_closes_its_mqtt_sessions() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let net = hub.network("revoke").await;
    hub.device("rv-dev", net).await;
    let (locked, _) = hub.client_user("rv-locked", &[net]).await;
    let (deleted, _) = hub.client_user("rv-deleted", &[net]).await;
    // The locked user's client id is a device, so its disconnect is reported as presence.
    let mut a = Mqtt::login(&hub, "rv-dev", "rv-locked", CLIENT_PASSWORD).await;
    let mut b = Mqtt::login(&hub, "rv-b", "rv-deleted", CLIENT_PASSWORD).await;
    for s in [&mut a, &mut b] {
        assert_eq!(s.subscribe("dh/notification/+/+/rv-dev/#").await, GRANTED);
    }
    hub.post(&hub.admin, "/device/rv-dev/notification", json!({"notification": "before"})).await.expect(201);
    for s in [&mut a, &mut b] {
        assert_eq!(next_notification_name(s).await, "before");
    }

    hub.put(&hub.admin, &format!("/user/{locked}"), json!({"status": 1})).await.expect(204);
    assert!(a.closed_within(Duration::from_secs(10)).await, "the locked user's session is still open");
    hub.post(&hub.admin, "/device/rv-dev/notification", json!({"notification": "after-lock"})).await.expect(201);
    assert_eq!(next_notification_name(&mut b).await, "after-lock");
    only_presence_arrives(&mut a).await;

    hub.delete(&hub.admin, &format!("/user/{deleted}")).await.expect(204);
    assert!(b.closed_within(Duration::from_secs(10)).await, "the deleted user's session is still open");
    hub.post(&hub.admin, "/device/rv-dev/notification", json!({"notification": "after-delete"})).await.expect(201);
    only_presence_arrives(&mut b).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let list = hub.get(&hub.admin, "/device/rv-dev/notification?notification=$device-disconnected").await;
        if let Some(n) = list.expect(200).as_array().and_then(|l| l.first().cloned()) {
            break n["parameters"]["reason"].clone();
        }
        assert!(Instant::now() < deadline, "no $device-disconnected for the locked user's session");
        sleep_ms(50).await;
    };
    assert_eq!(reason, "revoked");
}

#[tokio::test]
async fn requests_after_a_role_change_use_the_new_role() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let id = hub
        .post(&hub.admin, "/user", json!({"login": "rv-admin", "password": CLIENT_PASSWORD, "role": 0}))
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    let mut s = Mqtt::login(&hub, "rv-admin-1", "rv-admin", CLIENT_PASSWORD).await;
    s.ok("user/list", json!({}), &["users"]).await;
    hub.put(&hub.admin, &format!("/user/{id}"), json!({"role": 1})).await.expect(204);
    let r = s.call("user/list", json!({})).await;
    assert_eq!((r["status"].as_str(), r["code"].as_u64()), (Some("error"), Some(403)), "{r}");
    s.ok("server/info", json!({}), &["info"]).await;
}

#[tokio::test]
async fn dollar_filters_are_refused_in_the_suback() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut raw = raw_session(&hub, "dollar", Some((ADMIN_LOGIN, ADMIN_PASSWORD))).await;
    let filters = vec![("$SYS/#".to_string(), 1), ("ok/#".to_string(), 1), ("$other".to_string(), 0)];
    raw.send_packet(&Wire::Subscribe { pkid: 3, filters }).await;
    assert_eq!(raw.packet().await, Some(Wire::SubAck { pkid: 3, codes: vec![0x80, 1, 0x80] }));
    raw.send_packet(&Wire::PingReq).await;
    assert_eq!(raw.packet().await, Some(Wire::PingResp));
}

#[tokio::test]
async fn a_will_topic_with_wildcards_is_refused() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    for topic in ["status/+", "status/#", "#"] {
        let mut raw = Raw::open(&hub).await;
        raw.send_packet(&Wire::Connect(Box::new(codec::Connect {
            protocol_level: 4,
            client_id: "bad-will".into(),
            clean_session: true,
            keep_alive: 30,
            username: Some(ADMIN_LOGIN.into()),
            password: Some(Bytes::from_static(ADMIN_PASSWORD.as_bytes())),
            will: Some(codec::Will { topic: topic.into(), payload: Bytes::from_static(b"x"), qos: 0, retain: false }),
        })))
        .await;
        assert_eq!(raw.until_closed().await, Vec::<Wire>::new(), "{topic}");
    }
}

#[tokio::test]
async fn reserved_flags_of_subscribe_unsubscribe_and_pubrel_are_checked() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let subscribe = [0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00];
    let unsubscribe = [0xa0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'];
    let pubrel = [0x60, 0x02, 0x00, 0x01];
    for (name, bytes) in [("SUBSCRIBE", &subscribe[..]), ("UNSUBSCRIBE", &unsubscribe[..]), ("PUBREL", &pubrel[..])] {
        let mut raw = raw_session(&hub, "flags", Some((ADMIN_LOGIN, ADMIN_PASSWORD))).await;
        raw.send(bytes).await;
        assert_eq!(raw.until_closed().await, Vec::<Wire>::new(), "{name} with flags 0 was accepted");
    }
}

#[tokio::test]
async fn pubrel_for_an_unknown_packet_id_gets_pubcomp() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let mut raw = raw_session(&hub, "stray-pubrel", Some((ADMIN_LOGIN, ADMIN_PASSWORD))).await;
    raw.send_packet(&Wire::PubRel(77)).await;
    assert_eq!(raw.packet().await, Some(Wire::PubComp(77)));
    raw.send_packet(&Wire::PingReq).await;
    assert_eq!(raw.packet().await, Some(Wire::PingResp));
    // A plain QoS 2 publish still completes through the router.
    raw.send_packet(&Wire::Publish(codec::Publish {
        dup: false,
        qos: 2,
        retain: false,
        topic: "plain/qos2".into(),
        pkid: 78,
        payload: Bytes::from_static(b"x"),
    }))
    .await;
    assert_eq!(raw.packet().await, Some(Wire::PubRec(78)));
    raw.send_packet(&Wire::PubRel(78)).await;
    assert_eq!(raw.packet().await, Some(Wire::PubComp(78)));
}

#[tokio::test]
async fn anonymous_sessions_that_never_authenticate_are_closed() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.mqtt.anonymous_timeout_secs = 1).await;
    let mut idle = Raw::open(&hub).await;
    idle.send(&connect_packet("MQTT", 4, "anon-idle", None)).await;
    assert_eq!(idle.packet().await, Some(connack_code(0)));
    let t = Instant::now();
    assert_eq!(idle.until_closed().await, Vec::<Wire>::new());
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());

    // Authenticating in time keeps the session; so do credentials at CONNECT.
    let mut anon = Mqtt::anonymous(&hub, "anon-auth").await;
    let mut user = Mqtt::login(&hub, "anon-user", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    let token = hub.admin.clone();
    anon.ok("authenticate", json!({"token": token}), &[]).await;
    assert!(!anon.closed_within(Duration::from_millis(2000)).await, "an authenticated session was closed");
    assert!(!user.closed_within(Duration::from_millis(10)).await);
    anon.ok("server/info", json!({}), &["info"]).await;
}

#[tokio::test]
async fn a_persistent_subscription_that_cannot_be_stored_is_refused_in_the_suback() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    // Fault injection from outside: the database refuses every stored subscription.
    let db = hub.db().await;
    db.refuse_inserts("mqtt_subscription", "injected failure").await;
    let mut o = with_credentials(&hub, "unstorable", ADMIN_LOGIN, ADMIN_PASSWORD);
    o.set_clean_session(false);
    let mut s = Mqtt::connect(o).await;
    assert_eq!(s.subscribe("dh/command/#").await, REFUSED, "a subscription it would silently lose");
    // Nothing was left behind: no delivery on the refused filter.
    hub.post(&hub.admin, &format!("/device/{SAMPLE_DEVICE}/command"), json!({"command": "lost"})).await.expect(201);
    s.quiet(QUIET).await;
    // Response topics and clean sessions store nothing, so they are unaffected.
    s.ok("server/info", json!({}), &["info"]).await;
    let mut clean = Mqtt::login(&hub, "clean-one", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(clean.subscribe("dh/command/#").await, GRANTED);
    db.close().await;
}

/// `restServerUrl` of `server/info` over an MQTT session of the admin.
async fn rest_server_url_over_mqtt(hub: &TestHub) -> String {
    let mut s = Mqtt::login(hub, "info-client", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    let r = s.ok("server/info", json!({}), &["info"]).await;
    s.disconnect().await;
    r["info"]["restServerUrl"].as_str().unwrap_or_else(|| panic!("restServerUrl in {r}")).to_string()
}

#[tokio::test]
async fn server_info_over_mqtt_reports_a_usable_rest_url() {
    skip_unless_backend!();
    // The HTTP listener's own address when it listens on one.
    let hub = TestHub::start().await;
    let url = rest_server_url_over_mqtt(&hub).await;
    assert_eq!(url, hub.base);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    hub.get(&hub.admin, &format!("{url}/info")).await.expect(200);
    hub.stop().await;

    // Listening on every address: the address the MQTT client reached, with the HTTP port.
    let hub = TestHub::start_with(|s| s.http.listen = "0.0.0.0:0".into()).await;
    let port = hub.base.split(':').nth(2).unwrap().split('/').next().unwrap().to_string();
    let url = rest_server_url_over_mqtt(&hub).await;
    assert_eq!(url, format!("http://127.0.0.1:{port}/api/rest"));
    hub.get(&hub.admin, &format!("{url}/info")).await.expect(200);
    hub.stop().await;

    // `[http] public_url` when set (a trailing slash is not doubled).
    let hub = TestHub::start_with(|s| s.http.public_url = "https://hub.example.com/".into()).await;
    assert_eq!(rest_server_url_over_mqtt(&hub).await, "https://hub.example.com/api/rest");
}
