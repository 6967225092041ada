//! MQTT sessions: persistent sessions get the commands they missed (from SQL, across restarts),
//! presence notifications, last will, takeover.

use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::TestHub;
use crate::common::{ADMIN_LOGIN, ADMIN_PASSWORD};

struct Device {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    subacks: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

fn opts(hub: &TestHub, id: &str, clean: bool) -> MqttOptions {
    let addr = hub.mqtt_addr();
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(ADMIN_LOGIN, ADMIN_PASSWORD);
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(5));
    o
}

/// Connects and returns the device plus the CONNACK's session-present flag.
async fn connect(o: MqttOptions) -> (Device, bool) {
    let (client, mut ev) = AsyncClient::new(o, 100);
    let present = loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await.expect("CONNACK in time") {
            Ok(Event::Incoming(Packet::ConnAck(a))) => break a.session_present,
            Ok(_) => {}
            Err(e) => panic!("connect failed: {e}"),
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (stx, subacks) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            match e {
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), serde_json::from_slice(&p.payload).unwrap_or(Value::Null)));
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    let _ = stx.send(());
                }
                _ => {}
            }
        }
    });
    (Device { client, rx, subacks, task }, present)
}

impl Device {
    async fn next(&mut self, d: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(d, self.rx.recv()).await.ok().flatten()
    }
    /// Command names received within `d`.
    async fn commands(&mut self, d: Duration) -> Vec<String> {
        let mut names = Vec::new();
        while let Some((_, v)) = self.next(d).await {
            names.push(v["command"]["command"].as_str().unwrap_or_default().to_string());
        }
        names
    }
    /// Subscribes and waits for the SUBACK (the subscription is live and stored by then).
    async fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.subacks.recv()).await.expect("SUBACK in time");
    }
    async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
    /// Drops the TCP connection without DISCONNECT.
    fn crash(self) {
        self.task.abort();
    }
}

async fn command(hub: &TestHub, device: &str, name: &str, extra: Value) -> i64 {
    let mut body = json!({"command": name});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    hub.post(&hub.admin, &format!("/device/{device}/command"), body).await.expect(201)["id"].as_i64().unwrap()
}

#[tokio::test]
async fn persistent_session_gets_missed_commands_also_after_restart() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    hub.device("dev-p", 1).await;
    let (mut d, present) = connect(opts(&hub, "dev-p", false)).await;
    assert!(!present, "first connection has no stored session");
    d.subscribe("dh/command/+/+/dev-p/#").await;
    command(&hub, "dev-p", "online", json!({})).await;
    assert_eq!(d.commands(Duration::from_millis(800)).await, ["online"]);
    let online_id = hub.get(&hub.admin, "/device/dev-p/command?command=online").await.expect(200)[0]["id"].clone();
    hub.put(&hub.admin, &format!("/device/dev-p/command/{online_id}"), json!({"status": "done"})).await.expect(204);
    d.disconnect().await;

    // While offline: one plain command, one that expires, one confirmed before the device returns.
    command(&hub, "dev-p", "missed", json!({})).await;
    command(&hub, "dev-p", "expires", json!({"lifetime": 1})).await;
    let confirmed = command(&hub, "dev-p", "confirmed", json!({})).await;
    hub.put(&hub.admin, &format!("/device/dev-p/command/{confirmed}"), json!({"status": "done"})).await.expect(204);
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let (mut d, present) = connect(opts(&hub, "dev-p", false)).await;
    assert!(present, "the persistent session was stored");
    assert_eq!(d.commands(Duration::from_millis(800)).await, ["missed"]);
    // Live delivery still works on the restored subscription.
    command(&hub, "dev-p", "live", json!({})).await;
    assert_eq!(d.commands(Duration::from_millis(800)).await, ["live"]);
    d.disconnect().await;

    // The queue lives in SQL: a restart changes nothing.
    command(&hub, "dev-p", "after-restart", json!({})).await;
    let hub = hub.restart().await;
    let (mut d, present) = connect(opts(&hub, "dev-p", false)).await;
    assert!(present);
    let mut got = d.commands(Duration::from_millis(800)).await;
    got.sort();
    // Unconfirmed commands are owed until the device confirms them.
    assert_eq!(got, ["after-restart", "live", "missed"]);
    for name in ["after-restart", "live", "missed"] {
        let id =
            hub.get(&hub.admin, &format!("/device/dev-p/command?command={name}")).await.expect(200)[0]["id"].clone();
        hub.put(&hub.admin, &format!("/device/dev-p/command/{id}"), json!({"status": "done"})).await.expect(204);
    }
    d.disconnect().await;
    let (mut d, _) = connect(opts(&hub, "dev-p", false)).await;
    assert_eq!(d.commands(Duration::from_millis(800)).await, Vec::<String>::new());
    d.disconnect().await;

    // A clean session forgets the stored subscriptions: no replay, nothing owed later.
    command(&hub, "dev-p", "never", json!({})).await;
    let (mut d, present) = connect(opts(&hub, "dev-p", true)).await;
    assert!(!present);
    assert_eq!(d.commands(Duration::from_millis(800)).await, Vec::<String>::new());
    d.disconnect().await;
    let (mut d, present) = connect(opts(&hub, "dev-p", false)).await;
    assert!(!present);
    assert_eq!(d.commands(Duration::from_millis(800)).await, Vec::<String>::new());
    d.disconnect().await;
}

#[tokio::test]
async fn presence_notifications_and_last_will() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    hub.device("dev-w", 1).await;
    let (watcher, _) = connect(opts(&hub, "watcher", true)).await;
    let mut watcher = watcher;
    watcher.subscribe("status/#").await;

    let (d, _) = connect(opts(&hub, "dev-w", true)).await;
    d.disconnect().await;
    let mut o = opts(&hub, "dev-w", true);
    o.set_last_will(rumqttc::LastWill::new("status/dev-w", "offline", QoS::AtLeastOnce, false));
    let (d, _) = connect(o).await;
    d.crash();
    let (topic, payload) = watcher.next(Duration::from_secs(5)).await.expect("the last will is published");
    assert_eq!(topic, "status/dev-w");
    assert_eq!(payload, Value::Null, "payload `offline` is not JSON");

    // The second disconnect is recorded once the hub has noticed the lost connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let presence = loop {
        let list = hub.get(&hub.admin, "/device/dev-w/notification?sortOrder=ASC&take=100").await.expect(200);
        let presence: Vec<(String, Value)> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| {
                n["notification"].as_str().unwrap().starts_with("$device-") && n["notification"] != "$device-add"
            })
            .map(|n| (n["notification"].as_str().unwrap().to_string(), n["parameters"].clone()))
            .collect();
        if presence.len() >= 4 || tokio::time::Instant::now() > deadline {
            break presence;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        presence,
        vec![
            ("$device-connected".to_string(), json!({"clientId": "dev-w", "cleanSession": true})),
            ("$device-disconnected".to_string(), json!({"clientId": "dev-w", "reason": "disconnect", "will": false})),
            ("$device-connected".to_string(), json!({"clientId": "dev-w", "cleanSession": true})),
            (
                "$device-disconnected".to_string(),
                json!({"clientId": "dev-w", "reason": "connection-lost", "will": true})
            ),
        ]
    );
    // Clients may not forge them.
    hub.post(&hub.admin, "/device/dev-w/notification", json!({"notification": "$device-connected"}))
        .await
        .expect_error(403, "It's forbidden to insert these special notifications: $device-update, $device-add.");
}

#[tokio::test]
async fn a_second_connect_with_the_same_client_id_takes_over() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let (mut first, _) = connect(opts(&hub, "twin", true)).await;
    first.subscribe("t/#").await;
    let (mut second, _) = connect(opts(&hub, "twin", true)).await;
    second.subscribe("t/#").await;
    second.client.publish("t/x", QoS::AtLeastOnce, false, "{}").await.unwrap();
    assert_eq!(second.next(Duration::from_secs(5)).await.map(|(t, _)| t), Some("t/x".to_string()));
    // The first connection was closed by the takeover and receives nothing.
    assert_eq!(first.next(Duration::from_millis(500)).await, None);
    assert!(first.task.is_finished() || tokio::time::timeout(Duration::from_secs(5), &mut first.task).await.is_ok());
}

#[tokio::test]
async fn mqtt_over_websocket_speaks_the_same_protocol() {
    skip_unless_backend!();
    use bytes::BytesMut;
    use futures_util::{SinkExt, StreamExt};
    use hivehub::mqtt::codec::{self, Connect, Packet, Publish};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let hub = TestHub::start_with(|s| s.mqtt.ws_listen = "127.0.0.1:0".into()).await;
    let addr = hub.mqtt_ws_addr();
    let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
    assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), "mqtt");

    let send = |p: Packet| {
        let mut out = BytesMut::new();
        codec::encode(&p, &mut out);
        Message::Binary(out.freeze())
    };
    let mut inbox = BytesMut::new();
    async fn next_packet(
        ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
        inbox: &mut BytesMut,
    ) -> Packet {
        loop {
            if let Some(p) = codec::decode(inbox, 1 << 20).unwrap() {
                return p;
            }
            let message = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
            if let Message::Binary(b) = message {
                inbox.extend_from_slice(&b);
            }
        }
    }
    ws.send(send(Packet::Connect(Box::new(Connect {
        protocol_level: 4,
        client_id: "browser-1".into(),
        clean_session: true,
        keep_alive: 30,
        username: Some(ADMIN_LOGIN.into()),
        password: Some(ADMIN_PASSWORD.as_bytes().to_vec().into()),
        will: None,
    }))))
    .await
    .unwrap();
    assert_eq!(next_packet(&mut ws, &mut inbox).await, Packet::ConnAck { session_present: false, code: 0 });
    ws.send(send(Packet::Subscribe { pkid: 1, filters: vec![("dh/response/server/info@browser-1".into(), 1)] }))
        .await
        .unwrap();
    assert_eq!(next_packet(&mut ws, &mut inbox).await, Packet::SubAck { pkid: 1, codes: vec![1] });
    let request = json!({"action": "server/info", "requestId": 9}).to_string();
    ws.send(send(Packet::Publish(Publish {
        dup: false,
        qos: 0,
        retain: false,
        topic: "dh/request".into(),
        pkid: 0,
        payload: request.into_bytes().into(),
    })))
    .await
    .unwrap();
    match next_packet(&mut ws, &mut inbox).await {
        Packet::Publish(p) => {
            assert_eq!(p.topic, "dh/response/server/info@browser-1");
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            assert_eq!((v["status"].as_str(), v["requestId"].as_i64()), (Some("success"), Some(9)));
        }
        other => panic!("expected the response, got {other:?}"),
    }
}

#[tokio::test]
async fn mqtt_over_tls() {
    skip_unless_backend!();
    use bytes::BytesMut;
    use hivehub::mqtt::codec::{self, Connect, Packet};
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let hub = TestHub::start_with(|s| {
        s.mqtt.tls_listen = "127.0.0.1:0".into();
        s.mqtt.tls_cert_file = format!("{fixtures}/mqtt-test-cert.pem");
        s.mqtt.tls_key_file = format!("{fixtures}/mqtt-test-key.pem");
    })
    .await;
    let connector = crate::common::mqtt::tls_connector();
    let tcp = tokio::net::TcpStream::connect(hub.mqtt_tls_addr()).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the hub's certificate");

    let mut out = BytesMut::new();
    let connect = |password: &str| {
        Packet::Connect(Box::new(Connect {
            protocol_level: 4,
            client_id: "tls-1".into(),
            clean_session: true,
            keep_alive: 30,
            username: Some(ADMIN_LOGIN.into()),
            password: Some(password.as_bytes().to_vec().into()),
            will: None,
        }))
    };
    codec::encode(&connect(ADMIN_PASSWORD), &mut out);
    tls.write_all(&out).await.unwrap();
    let mut inbox = BytesMut::new();
    let connack = loop {
        if let Some(p) = codec::decode(&mut inbox, 1 << 16).unwrap() {
            break p;
        }
        assert!(tls.read_buf(&mut inbox).await.unwrap() > 0, "connection closed before CONNACK");
    };
    assert_eq!(connack, Packet::ConnAck { session_present: false, code: 0 });
}

#[tokio::test]
async fn unassigning_a_network_stops_mqtt_deliveries_at_once() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let net = hub.network("mqtt-unassign").await;
    hub.device("mu-1", net).await;
    let (uid, _) = hub.client_user("mu-client", &[net]).await;
    let addr = hub.mqtt_addr();
    let mut o = MqttOptions::new("mu-watcher", addr.ip().to_string(), addr.port());
    o.set_credentials("mu-client", "client-pass-1");
    let (mut d, _) = connect(o).await;
    d.subscribe("dh/notification/#").await;
    hub.post(&hub.admin, "/device/mu-1/notification", json!({"notification": "visible"})).await.expect(201);
    let (_, push) = d.next(Duration::from_secs(5)).await.expect("delivered while assigned");
    assert_eq!(push["notification"]["notification"], "visible");
    hub.delete(&hub.admin, &format!("/user/{uid}/network/{net}")).await.expect(204);
    hub.post(&hub.admin, "/device/mu-1/notification", json!({"notification": "hidden"})).await.expect(201);
    assert_eq!(d.next(Duration::from_millis(700)).await, None, "a network no longer assigned still delivers");
}

#[tokio::test]
async fn refused_publishes_are_dropped_and_counted() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let stats = |hub: &TestHub| {
        let hub = hub.base.clone();
        async move {
            let v: Value = reqwest::get(format!("{hub}/info/cache")).await.unwrap().json().await.unwrap();
            v["cacheStats"].as_str().unwrap().to_string()
        }
    };
    assert!(stats(&hub).await.contains("; 0 MQTT publishes dropped"), "{}", stats(&hub).await);
    let (_uid, _) = hub.client_user("dropper", &[]).await;
    let addr = hub.mqtt_addr();
    let mut o = MqttOptions::new("dropper-1", addr.ip().to_string(), addr.port());
    o.set_credentials("dropper", "client-pass-1");
    let (d, _) = connect(o).await;
    // A device the user cannot see, and a topic that is not publishable.
    d.client
        .publish("dh/notification/1/1/e50d6085-2aba-48e9-b1c3-73c673e414be/x", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    d.client.publish("dh/response/x@dropper-1", QoS::AtLeastOnce, false, "{}").await.unwrap();
    let mut text = String::new();
    for _ in 0..50 {
        text = stats(&hub).await;
        if text.contains("; 2 MQTT publishes dropped") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains("1 MQTT connections") && text.contains("; 2 MQTT publishes dropped"), "{text}");
    let list = hub.get(&hub.admin, "/device/e50d6085-2aba-48e9-b1c3-73c673e414be/notification?notification=x").await;
    assert_eq!(list.expect(200), json!([]));
}

/// Options for `id` with a login/password, or anonymous (`None`).
fn opts_as(hub: &TestHub, id: &str, clean: bool, credentials: Option<(&str, &str)>) -> MqttOptions {
    let addr = hub.mqtt_addr();
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    if let Some((login, password)) = credentials {
        o.set_credentials(login, password);
    }
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(5));
    o
}

/// The CONNACK code a CONNECT with these options gets (the connection is dropped afterwards).
async fn connack_code(o: MqttOptions) -> ConnectReturnCode {
    let (_client, mut ev) = AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await.expect("CONNACK in time") {
            Ok(Event::Incoming(Packet::ConnAck(a))) => return a.code,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return code,
            Err(e) => panic!("connect failed: {e}"),
        }
    }
}

/// Polls `check` until it holds, for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

async fn presence_count(hub: &TestHub, device: &str, name: &str) -> usize {
    let list = hub.get(&hub.admin, &format!("/device/{device}/notification?take=1000")).await.expect(200);
    list.as_array().unwrap().iter().filter(|n| n["notification"] == name).count()
}

const OWNER: Option<(&str, &str)> = Some(("sess-owner", "client-pass-1"));
const INTRUDER: Option<(&str, &str)> = Some(("sess-intruder", "client-pass-1"));

/// Anonymous and another user, each with a clean and a persistent session, get CONNACK 5.
async fn intruders_are_refused(hub: &TestHub, id: &str) {
    for credentials in [None, INTRUDER] {
        for clean in [false, true] {
            let code = connack_code(opts_as(hub, id, clean, credentials)).await;
            assert_eq!(code, ConnectReturnCode::NotAuthorized, "{credentials:?}, clean session {clean}");
        }
    }
}

#[tokio::test]
async fn another_user_or_anonymous_cannot_take_over_a_session() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let net = hub.network("owned").await;
    hub.device("dev-own", net).await;
    hub.client_user("sess-owner", &[net]).await;
    hub.client_user("sess-intruder", &[net]).await;
    let (mut d, present) = connect(opts_as(&hub, "dev-own", false, OWNER)).await;
    assert!(!present);
    d.subscribe("dh/command/+/+/dev-own/#").await;

    // While the owner is connected: refused, and the owner's connection keeps working.
    intruders_are_refused(&hub, "dev-own").await;
    let live = command(&hub, "dev-own", "live", json!({})).await;
    assert_eq!(d.commands(Duration::from_millis(800)).await, ["live"]);
    hub.put(&hub.admin, &format!("/device/dev-own/command/{live}"), json!({"status": "done"})).await.expect(204);
    assert!(!d.task.is_finished(), "the owner's connection was closed");
    d.disconnect().await;
    let disconnected = || async { presence_count(&hub, "dev-own", "$device-disconnected").await > 0 };
    eventually("the owner's disconnect", disconnected).await;

    // While only the stored session exists: refused, and the stored subscription stays.
    command(&hub, "dev-own", "owed", json!({})).await;
    intruders_are_refused(&hub, "dev-own").await;
    let (mut d, present) = connect(opts_as(&hub, "dev-own", false, OWNER)).await;
    assert!(present, "the owner's session is still stored");
    assert_eq!(d.commands(Duration::from_millis(800)).await, ["owed"]);

    // The same user may take its session over.
    let (mut again, present) = connect(opts_as(&hub, "dev-own", false, OWNER)).await;
    assert!(present);
    assert!(tokio::time::timeout(Duration::from_secs(5), &mut d.task).await.is_ok(), "old connection still open");
    let mut got = again.commands(Duration::from_millis(800)).await;
    command(&hub, "dev-own", "after-takeover", json!({})).await;
    got.extend(again.commands(Duration::from_millis(800)).await);
    assert_eq!(got, ["owed", "after-takeover"]);
    again.disconnect().await;

    // After a restart the stored session is still the owner's: a hub that starts knows which client
    // ids are stored persistent, so a clean session of another user is not let in unread.
    let hub = hub.restart().await;
    intruders_are_refused(&hub, "dev-own").await;
    let (d, present) = connect(opts_as(&hub, "dev-own", false, OWNER)).await;
    assert!(present, "the owner's session survives the restart and the refusals");
    d.disconnect().await;
}

/// The presence notifications of one device, with what it published, ordered by (timestamp, id) —
/// the order in which pollers and cursors see them. `$device-add` is left out.
async fn device_messages_in_commit_order(hub: &TestHub, device: &str) -> Vec<String> {
    let list = hub
        .get(&hub.admin, &format!("/device/{device}/notification?sortField=timestamp&sortOrder=ASC&take=100"))
        .await
        .expect(200);
    let mut rows: Vec<(String, i64, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let name = n["notification"].as_str().unwrap().to_string();
            (n["timestamp"].as_str().unwrap().to_string(), n["id"].as_i64().unwrap(), name)
        })
        .filter(|(_, _, name)| name != "$device-add")
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, _, name)| name).collect()
}

#[tokio::test]
async fn presence_notifications_bracket_what_the_session_published() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let net = hub.network("presence-order").await;
    let ids: Vec<String> = (0..30).map(|i| format!("order-{i}")).collect();
    for id in &ids {
        hub.device(id, net).await;
    }
    // Each device connects with its own id, publishes at once and says goodbye: its first
    // telemetry must not precede its `$device-connected`, nor follow its `$device-disconnected`.
    let mut sessions = tokio::task::JoinSet::new();
    for id in &ids {
        let o = opts(&hub, id, true);
        let topic = format!("dh/notification/{net}//{id}/telemetry");
        sessions.spawn(async move {
            let (d, _) = connect(o).await;
            d.client
                .publish(topic, QoS::AtLeastOnce, false, json!({"parameters": {"n": 1}}).to_string())
                .await
                .unwrap();
            d.disconnect().await;
        });
    }
    while let Some(done) = sessions.join_next().await {
        done.unwrap();
    }
    let expected = ["$device-connected", "telemetry", "$device-disconnected"];
    for id in &ids {
        let mut names = Vec::new();
        for _ in 0..100 {
            names = device_messages_in_commit_order(&hub, id).await;
            if names.len() >= expected.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(names, expected, "messages of {id} in commit order");
    }
}

#[tokio::test]
async fn a_persistent_subscription_made_right_after_connack_is_owed_its_commands() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let net = hub.network("owed").await;
    let ids: Vec<String> = (0..20).map(|i| format!("owed-{i}")).collect();
    for id in &ids {
        hub.device(id, net).await;
    }
    // Each session subscribes the moment it is connected and leaves at once: its subscription must
    // be stored by the SUBACK, whatever is still being recorded about the session.
    let mut sessions = tokio::task::JoinSet::new();
    for id in &ids {
        let o = opts(&hub, id, false);
        let filter = format!("dh/command/+/+/{id}/#");
        sessions.spawn(async move {
            let (mut d, _) = connect(o).await;
            d.subscribe(&filter).await;
            d.disconnect().await;
        });
    }
    while let Some(done) = sessions.join_next().await {
        done.unwrap();
    }
    for id in &ids {
        command(&hub, id, "while-away", json!({})).await;
    }
    let mut sessions = tokio::task::JoinSet::new();
    for id in &ids {
        let (o, id) = (opts(&hub, id, false), id.clone());
        sessions.spawn(async move {
            let (mut d, present) = connect(o).await;
            assert!(present, "{id}: the persistent session was stored");
            let got = d.commands(Duration::from_millis(800)).await;
            d.disconnect().await;
            assert_eq!(got, ["while-away"], "{id} gets the command it is owed");
        });
    }
    while let Some(done) = sessions.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn a_last_will_on_a_dh_topic_comes_before_device_disconnected() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let net = hub.network("will-order").await;
    let ids: Vec<String> = (0..10).map(|i| format!("will-{i}")).collect();
    for id in &ids {
        hub.device(id, net).await;
    }
    let mut sessions = tokio::task::JoinSet::new();
    for id in &ids {
        let mut o = opts(&hub, id, true);
        let will = json!({"parameters": {"reason": "gone"}}).to_string();
        o.set_last_will(rumqttc::LastWill::new(
            format!("dh/notification/{net}//{id}/gone"),
            will,
            QoS::AtLeastOnce,
            false,
        ));
        let topic = format!("dh/notification/{net}//{id}/telemetry");
        sessions.spawn(async move {
            let (d, _) = connect(o).await;
            d.client.publish(topic, QoS::AtLeastOnce, false, json!({"parameters": {}}).to_string()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            d.crash();
        });
    }
    while let Some(done) = sessions.join_next().await {
        done.unwrap();
    }
    let expected = ["$device-connected", "telemetry", "gone", "$device-disconnected"];
    for id in &ids {
        let mut names = Vec::new();
        for _ in 0..100 {
            names = device_messages_in_commit_order(&hub, id).await;
            if names.len() >= expected.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(names, expected, "messages of {id} in commit order");
    }
}

/// A session a crashed run (or a dead cluster instance) left recorded as connected is marked
/// disconnected with reason `node-lost`, with `$device-disconnected`, once its node's heartbeat is
/// older than `[cluster] node_timeout_secs` — on SQLite at the next start, as only one instance
/// can use the file.
#[tokio::test]
async fn sessions_left_connected_by_a_crashed_run_are_marked_node_lost() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    hub.device("crash-dev", 1).await;
    let recent = hivehub::time::now_ms();
    hub.sql_execute(
        "INSERT INTO cluster_node (node_id, started_at, last_seen) VALUES ('crashed-run', $1, $1)",
        &[recent.into()],
    )
    .await;
    hub.sql_execute(
        "INSERT INTO mqtt_session (client_id, user_id, clean, connected, connected_at, owner, node_id) \
         VALUES ('crash-dev', 1, TRUE, TRUE, $1, '1', 'crashed-run')",
        &[recent.into()],
    )
    .await;
    let hub = hub
        .restart_with(|s| {
            s.cluster.heartbeat_secs = 1;
            s.cluster.node_timeout_secs = 2;
        })
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = hub
            .sql_fetch_one("SELECT connected, disconnect_reason FROM mqtt_session WHERE client_id = 'crash-dev'", &[])
            .await;
        let list = hub.get(&hub.admin, "/device/crash-dev/notification?notification=$device-disconnected").await;
        let announced = list.expect(200).as_array().and_then(|l| l.first().cloned());
        if let Some(n) = announced {
            // SQLite has no boolean type: FALSE reads back as 0.
            assert!(row[0] == json!(false) || row[0] == json!(0), "{row:?}");
            assert_eq!(row[1], "node-lost");
            assert_eq!(n["parameters"], json!({"clientId": "crash-dev", "reason": "node-lost", "will": false}));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the crashed run's session is still connected: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let nodes = hub.sql_fetch_all("SELECT node_id FROM cluster_node WHERE node_id = 'crashed-run'", &[]).await;
    assert!(nodes.is_empty(), "the crashed run's node is forgotten");
}
