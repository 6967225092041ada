//! Cluster mode, control across instances: two hubs on one PostgreSQL database act as one for what
//! changes live state — MQTT client-id takeover, locked users and changed passwords, unassigned
//! networks, deleted devices — and for MQTT sessions that move between instances or are left behind
//! by an instance that died (`node-lost`). Declared in `postgres.rs` only.
//!
//! How fast a change reaches the other instance is printed (the contract is 100 ms); the assertions
//! allow seconds, so a slow machine does not fail them.

use std::time::{Duration, Instant};

use rumqttc::{ConnectReturnCode, QoS};
use serde_json::{json, Value};

use super::TestHub;
use crate::common::mqtt::{connect_code, with_credentials, Mqtt, GRANTED};
use crate::common::ws::Ws;
use crate::common::Database;

const CLIENT_PASSWORD: &str = "client-pass-1";
const WITHIN: Duration = Duration::from_secs(5);

/// Two instances on one fresh database, named `node-a` and `node-b`.
async fn two_instances(adjust: impl Fn(&mut hivehub::config::Settings)) -> (TestHub, TestHub, Database) {
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let a = TestHub::start_on(database.url.clone(), |s| {
        s.cluster.node_id = "node-a".into();
        adjust(s);
    })
    .await;
    let b = TestHub::start_on(database.url.clone(), |s| {
        s.cluster.node_id = "node-b".into();
        adjust(s);
    })
    .await;
    (a, b, database)
}

/// `(connected, node_id, disconnect_reason)` of a client id's session record.
async fn session_row(hub: &TestHub, client_id: &str) -> (Value, Value, Value) {
    let row = hub
        .sql_fetch_one(
            "SELECT connected, node_id, disconnect_reason FROM mqtt_session WHERE client_id = $1",
            &[client_id.to_string().into()],
        )
        .await;
    (row[0].clone(), row[1].clone(), row[2].clone())
}

/// The `$device-connected` / `$device-disconnected` notifications of a device, oldest first:
/// `(name, reason)`.
async fn presence(hub: &TestHub, device: &str) -> Vec<(String, Value)> {
    let list = hub.get(&hub.admin, &format!("/device/{device}/notification?sortOrder=ASC&take=100")).await.expect(200);
    list.as_array()
        .unwrap()
        .iter()
        .map(|n| (n["notification"].as_str().unwrap().to_string(), n["parameters"]["reason"].clone()))
        .filter(|(name, _)| name == "$device-connected" || name == "$device-disconnected")
        .collect()
}

/// Waits until `f` is true, up to `WITHIN`; returns how long it took.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) -> Duration {
    let t0 = Instant::now();
    loop {
        if f().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < WITHIN, "not within {WITHIN:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_id_connecting_to_another_instance_takes_over_its_session() {
    skip_unless_backend!();
    let (a, b, _db) = two_instances(|_| {}).await;
    let net = a.network("takeover").await;
    a.device("tk-dev", net).await;
    a.client_user("tk-user", &[net]).await;
    a.client_user("tk-other", &[net]).await;

    let mut on_a = Mqtt::login(&a, "tk-dev", "tk-user", CLIENT_PASSWORD).await;
    assert_eq!(on_a.subscribe("dh/notification/+/+/tk-dev/#").await, GRANTED);
    assert_eq!(session_row(&a, "tk-dev").await.1, "node-a");
    // Another user cannot take a session that is live on the other instance.
    let refused = connect_code(with_credentials(&b, "tk-dev", "tk-other", CLIENT_PASSWORD)).await;
    assert_eq!(refused, Ok(ConnectReturnCode::NotAuthorized));
    assert!(!on_a.closed_within(Duration::from_millis(300)).await, "a refused CONNECT closed the live session");

    let t0 = Instant::now();
    let mut on_b = Mqtt::login(&b, "tk-dev", "tk-user", CLIENT_PASSWORD).await;
    assert!(on_a.closed_within(WITHIN).await, "the session on instance A was not taken over");
    println!("takeover across instances: old connection closed {:?} after CONNECT", t0.elapsed());
    let (connected, node, _) = session_row(&b, "tk-dev").await;
    assert_eq!((connected, node), (json!(true), json!("node-b")));
    assert_eq!(on_b.subscribe("dh/notification/+/+/tk-dev/#").await, GRANTED);
    b.post(&b.admin, "/device/tk-dev/notification", json!({"notification": "after"})).await.expect(201);
    let got = on_b.msg().await;
    assert_eq!(got.payload["notification"]["notification"], "after", "{got:?}");

    // A takeover is not a disconnect: the device stayed connected throughout.
    on_b.disconnect().await;
    let a = &a;
    eventually("the disconnect is announced", || async move {
        let names: Vec<String> = presence(a, "tk-dev").await.into_iter().map(|(n, _)| n).collect();
        names == ["$device-connected", "$device-connected", "$device-disconnected"]
    })
    .await;
    assert_eq!(session_row(a, "tk-dev").await.0, json!(false));
}

#[tokio::test]
async fn locking_a_user_on_one_instance_closes_its_sessions_on_the_other() {
    skip_unless_backend!();
    let (a, b, _db) = two_instances(|_| {}).await;
    let net = a.network("lock").await;
    let (uid, token) = a.client_user("lk-user", &[net]).await;
    let mut mqtt = Mqtt::login(&b, "lk-1", "lk-user", CLIENT_PASSWORD).await;
    let mut ws = Ws::authenticated(&b, &token).await;
    ws.subscribe("notification/subscribe", json!({})).await;

    let t0 = Instant::now();
    a.put(&a.admin, &format!("/user/{uid}"), json!({"status": 1})).await.expect(204);
    assert!(mqtt.closed_within(WITHIN).await, "the locked user's MQTT session on B is still open");
    let mqtt_closed = t0.elapsed();
    assert!(ws.closed_within(WITHIN).await.is_some(), "the locked user's WebSocket session on B is still open");
    println!("lock on A: MQTT session on B closed after {mqtt_closed:?}, WebSocket after {:?}", t0.elapsed());
    let refused = connect_code(with_credentials(&b, "lk-2", "lk-user", CLIENT_PASSWORD)).await;
    assert_ne!(refused, Ok(ConnectReturnCode::Success));
}

#[tokio::test]
async fn a_password_changed_on_one_instance_is_refused_on_the_other() {
    skip_unless_backend!();
    // B remembers verified passwords for a while (the credential cache): the change must still count.
    let (a, b, _db) = two_instances(|s| s.auth.credential_cache_secs = 600).await;
    let (uid, _) = a.client_user("pw-user", &[]).await;
    Mqtt::login(&b, "pw-1", "pw-user", CLIENT_PASSWORD).await.disconnect().await;
    a.put(&a.admin, &format!("/user/{uid}"), json!({"password": "client-pass-2"})).await.expect(204);
    let old = connect_code(with_credentials(&b, "pw-2", "pw-user", CLIENT_PASSWORD)).await;
    assert_eq!(old, Ok(ConnectReturnCode::BadUserNamePassword));
    Mqtt::login(&b, "pw-3", "pw-user", "client-pass-2").await.disconnect().await;
}

#[tokio::test]
async fn unassigning_a_network_on_one_instance_stops_deliveries_on_the_other() {
    skip_unless_backend!();
    let (a, b, _db) = two_instances(|_| {}).await;
    let net = a.network("unassign").await;
    a.device("ua-dev", net).await;
    let (uid, _) = a.client_user("ua-user", &[net]).await;
    let mut watcher = Mqtt::login(&b, "ua-watch", "ua-user", CLIENT_PASSWORD).await;
    assert_eq!(watcher.subscribe("dh/notification/#").await, GRANTED);
    a.post(&a.admin, "/device/ua-dev/notification", json!({"notification": "visible"})).await.expect(201);
    assert_eq!(watcher.msg().await.payload["notification"]["notification"], "visible");

    a.delete(&a.admin, &format!("/user/{uid}/network/{net}")).await.expect(204);
    // The control event travels beside the commit tail; give it its 100 ms before the next insert.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.post(&a.admin, "/device/ua-dev/notification", json!({"notification": "hidden"})).await.expect(201);
    if let Some(m) = watcher.recv_within(Duration::from_millis(700)).await {
        panic!("a network no longer assigned still delivers on the other instance: {m:?}");
    }
}

#[tokio::test]
async fn deleting_a_device_on_one_instance_ends_its_subscriptions_on_the_other() {
    skip_unless_backend!();
    let (a, b, _db) = two_instances(|_| {}).await;
    a.device("del-x", 1).await;
    let mut ws = Ws::authenticated(&b, &b.admin).await;
    ws.subscribe("notification/subscribe", json!({"deviceId": "del-x"})).await;
    a.delete(&a.admin, "/device/del-x").await.expect(204);
    let t0 = Instant::now();
    loop {
        let r = ws.ok("subscription/list", json!({}), &["subscriptions"]).await;
        if r["subscriptions"] == json!([]) {
            break;
        }
        assert!(t0.elapsed() < WITHIN, "the subscription on B did not end: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("device deleted on A: subscription on B ended within {:?}", t0.elapsed());
    // A new device with the same id is a different device.
    a.device("del-x", 1).await;
    a.post(&a.admin, "/device/del-x/notification", json!({"notification": "new-life"})).await.expect(201);
    if let Some(m) = ws.recv_within(Duration::from_millis(700)).await {
        panic!("the deleted device's subscription still delivers: {m}");
    }
}

#[tokio::test]
async fn a_persistent_session_moving_to_another_instance_gets_its_owed_commands() {
    skip_unless_backend!();
    let (a, b, _db) = two_instances(|_| {}).await;
    a.device("mv-dev", 1).await;
    let persistent = |hub: &TestHub| {
        let mut o = with_credentials(hub, "mv-dev", crate::common::ADMIN_LOGIN, crate::common::ADMIN_PASSWORD);
        o.set_clean_session(false);
        o
    };
    let mut on_a = Mqtt::connect(persistent(&a)).await;
    assert_eq!(on_a.subscribe_qos("dh/command/+/+/mv-dev/#", QoS::AtLeastOnce).await, GRANTED);
    on_a.disconnect().await;
    // Inserted on B while the device is away.
    b.post(&b.admin, "/device/mv-dev/command", json!({"command": "owed"})).await.expect(201);
    let mut on_b = Mqtt::connect(persistent(&b)).await;
    let got = on_b.msg().await;
    assert_eq!(got.payload["command"]["command"], "owed", "{got:?}");
    // The restored subscription is live on B.
    a.post(&a.admin, "/device/mv-dev/command", json!({"command": "live"})).await.expect(201);
    assert_eq!(on_b.msg().await.payload["command"]["command"], "live");
}

#[tokio::test]
async fn sessions_of_an_instance_that_died_are_marked_node_lost() {
    skip_unless_backend!();
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let survivor = TestHub::start_on(database.url.clone(), |s| {
        s.cluster.heartbeat_secs = 1;
        s.cluster.node_timeout_secs = 2;
    })
    .await;
    survivor.device("nl-dev", 1).await;
    // What a crashed instance leaves behind: its heartbeat stops, its session stays recorded connected.
    let stale = hivehub::time::now_ms() - 60_000;
    survivor
        .sql_execute(
            "INSERT INTO cluster_node (node_id, started_at, last_seen) VALUES ('crashed', $1, $1)",
            &[stale.into()],
        )
        .await;
    survivor
        .sql_execute(
            "INSERT INTO mqtt_session (client_id, user_id, clean, connected, connected_at, owner, node_id) \
             VALUES ('nl-dev', 1, TRUE, TRUE, $1, '1', 'crashed')",
            &[stale.into()],
        )
        .await;
    let survivor = &survivor;
    eventually("the lost session is marked disconnected", || async move {
        session_row(survivor, "nl-dev").await == (json!(false), json!("crashed"), json!("node-lost"))
    })
    .await;
    eventually("$device-disconnected is announced", || async move {
        presence(survivor, "nl-dev").await == [("$device-disconnected".to_string(), json!("node-lost"))]
    })
    .await;
    let nodes = survivor.sql_fetch_all("SELECT node_id FROM cluster_node ORDER BY node_id", &[]).await;
    assert_eq!(nodes.len(), 1, "the dead node is forgotten, the survivor remains: {nodes:?}");
}

#[tokio::test]
async fn an_instance_taken_for_dead_closes_its_sessions_and_is_alive_again() {
    skip_unless_backend!();
    let (a, _b, _db) = two_instances(|s| s.cluster.heartbeat_secs = 1).await;
    let mut on_a = Mqtt::login(&a, "dead-1", crate::common::ADMIN_LOGIN, crate::common::ADMIN_PASSWORD).await;
    // As the other instances do when A's heartbeat is late: forget it and mark its sessions lost.
    a.sql_execute("DELETE FROM cluster_node WHERE node_id = 'node-a'", &[]).await;
    a.sql_execute("UPDATE mqtt_session SET connected = FALSE, disconnect_reason = 'node-lost'", &[]).await;
    assert!(on_a.closed_within(WITHIN).await, "A kept serving sessions the cluster marked lost");
    let a = &a;
    eventually("A registers again", || async move {
        !a.sql_fetch_all("SELECT 1 FROM cluster_node WHERE node_id = 'node-a'", &[]).await.is_empty()
    })
    .await;
    Mqtt::login(a, "dead-1", crate::common::ADMIN_LOGIN, crate::common::ADMIN_PASSWORD).await;
    assert_eq!(session_row(a, "dead-1").await.0, json!(true));
}
