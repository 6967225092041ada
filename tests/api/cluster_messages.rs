//! Cluster mode, messages: hub instances sharing one PostgreSQL database are one hub. A device's
//! notifications published on one instance reach subscribers on another — WebSocket, REST long poll
//! and MQTT — each exactly once and in (timestamp, id) order; a command created on one instance
//! reaches the MQTT device on the other, and the device's update wakes a wait on the first; and when an
//! instance is killed mid-ingest, its devices carry on on a survivor with nothing acknowledged lost or
//! doubled, and the survivor marks the dead instance's sessions lost. Declared in `postgres.rs` only.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::TestHub;
use crate::common::mqtt::{connack, Mqtt, GRANTED};
use crate::common::sql::TestDb;
use crate::common::ws::{live_subscriptions, wait_new_subscriptions, Ws};
use crate::common::{ADMIN_LOGIN, ADMIN_PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_hivehub");
/// The seeded sample device: network 1, device type 1.
const SAMPLE_DEVICE: &str = "e50d6085-2aba-48e9-b1c3-73c673e414be";

/// Two hubs (A, B) on one fresh database, and the database's URL.
async fn two_instances() -> (TestHub, TestHub, tempfile::TempDir, crate::common::Database) {
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let a = TestHub::start_on(database.url.clone(), |_| {}).await;
    let b = TestHub::start_on(database.url.clone(), |_| {}).await;
    (a, b, dir, database)
}

// ---------------------------------------------------------------------------------------------------
// Notifications: published over MQTT on A, received on B by every kind of subscriber.

/// A notification as a subscriber received it: which publish it is, and its place in the order.
#[derive(Debug, Clone)]
struct Seen {
    /// (publisher, seq) from its parameters.
    key: (u64, u64),
    timestamp: String,
    id: i64,
}

fn seen(n: &Value) -> Seen {
    let p = &n["parameters"];
    Seen {
        key: (p["d"].as_u64().unwrap_or_else(|| panic!("no d in {n}")), p["i"].as_u64().unwrap()),
        timestamp: n["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp in {n}")).to_string(),
        id: n["id"].as_i64().unwrap(),
    }
}

/// `got` holds `expected` distinct publishes, each once, in (timestamp, id) order — the order a
/// client resuming from its last timestamp relies on.
fn assert_once_in_order(who: &str, got: &[Seen], expected: usize) {
    let mut keys = BTreeSet::new();
    for s in got {
        assert!(keys.insert(s.key), "{who}: {:?} received twice", s.key);
    }
    assert_eq!(keys.len(), expected, "{who}: missed {} notifications", expected - keys.len());
    for w in got.windows(2) {
        let (x, y) = (&w[0], &w[1]);
        assert!((x.timestamp.as_str(), x.id) < (y.timestamp.as_str(), y.id), "{who}: out of order: {x:?} then {y:?}");
    }
}

/// A REST long poller on `hub`: chains `GET /device/notification/poll` from the timestamp of the last
/// notification it received, until it has `expected` or 60 s passed.
fn rest_poller(hub: &TestHub, start: String, expected: usize) -> tokio::task::JoinHandle<Vec<Seen>> {
    let (client, url, token) =
        (hub.client.clone(), format!("{}/device/notification/poll", hub.base), hub.admin.clone());
    tokio::spawn(async move {
        let (mut cursor, mut got) = (start, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < expected && Instant::now() < deadline {
            let query =
                [("deviceId", SAMPLE_DEVICE), ("names", "fan"), ("timestamp", cursor.as_str()), ("waitTimeout", "5")];
            let page: Vec<Value> =
                client.get(&url).bearer_auth(&token).query(&query).send().await.unwrap().json().await.unwrap();
            got.extend(page.iter().map(seen));
            if let Some(last) = got.last() {
                cursor = last.timestamp.clone();
            }
        }
        got
    })
}

/// Collects `expected` pushes of a WebSocket subscription (10 s at most between two).
fn ws_collector(mut ws: Ws, subscription: u64, expected: usize) -> tokio::task::JoinHandle<(Ws, Vec<Seen>)> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < expected {
            let Some(p) = ws.recv_within(Duration::from_secs(10)).await else { break };
            assert_eq!(p["action"], "notification/insert", "{p}");
            assert_eq!(p["subscriptionId"].as_u64(), Some(subscription), "{p}");
            got.push(seen(&p["notification"]));
        }
        (ws, got)
    })
}

/// Collects `expected` MQTT pushes (10 s at most between two).
fn mqtt_collector(mut m: Mqtt, expected: usize) -> tokio::task::JoinHandle<(Mqtt, Vec<Seen>)> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < expected {
            let Some(msg) = m.recv_within(Duration::from_secs(10)).await else { break };
            assert_eq!(msg.topic, format!("dh/notification/1/1/{SAMPLE_DEVICE}/fan"));
            assert_eq!(msg.payload["action"], "notification/insert", "{}", msg.payload);
            got.push(seen(&msg.payload["notification"]));
        }
        (m, got)
    })
}

/// Publishes `count` QoS 1 notifications at once (rumqttc keeps them in flight together) and waits
/// for every PUBACK.
async fn publish_all(mut device: Mqtt, d: u64, count: u64) -> Mqtt {
    let topic = format!("dh/notification/1/1/{SAMPLE_DEVICE}/fan");
    for i in 0..count {
        let payload = json!({"parameters": {"d": d, "i": i}}).to_string();
        device.client.publish(&topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    for n in 0..count {
        let acked = tokio::time::timeout(Duration::from_secs(20), device.puback.recv()).await;
        assert!(matches!(acked, Ok(Some(_))), "device {d}: {n} of {count} PUBACKs, then none for 20 s");
    }
    device
}

/// Devices on A publish 300 notifications over MQTT QoS 1, three concurrently; a WebSocket
/// subscriber, a REST long poller and an MQTT subscriber on B each get every one exactly once, in
/// (timestamp, id) order. They reach B only through B's commit tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_on_another_instance_get_an_mqtt_devices_notifications_once_in_order() {
    skip_unless_backend!();
    const DEVICES: u64 = 3;
    const PER_DEVICE: u64 = 100;
    const TOTAL: usize = (DEVICES * PER_DEVICE) as usize;
    let (a, b, _dir, _database) = two_instances().await;

    // The poller's cursor: a notification inserted before any of the published ones.
    let path = format!("/device/{SAMPLE_DEVICE}/notification");
    let start = a.post(&a.admin, &path, json!({"notification": "start"})).await.expect(201)["timestamp"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ws = Ws::authenticated(&b, &b.admin).await;
    let subscription =
        ws.subscribe("notification/subscribe", json!({"deviceId": SAMPLE_DEVICE, "names": ["fan"]})).await;
    let mut watcher = Mqtt::login(&b, "watcher-b", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(watcher.subscribe(&format!("dh/notification/1/1/{SAMPLE_DEVICE}/fan")).await, GRANTED);
    let ws = ws_collector(ws, subscription, TOTAL);
    let watcher = mqtt_collector(watcher, TOTAL);
    let poller = rest_poller(&b, start, TOTAL);

    let mut publishers = Vec::new();
    for d in 0..DEVICES {
        let device = Mqtt::login(&a, &format!("fan-{d}"), ADMIN_LOGIN, ADMIN_PASSWORD).await;
        publishers.push(tokio::spawn(publish_all(device, d, PER_DEVICE)));
    }
    for p in publishers {
        p.await.unwrap().disconnect().await;
    }

    let (mut ws, pushed) = ws.await.unwrap();
    assert_once_in_order("WebSocket on B", &pushed, TOTAL);
    let (mut watcher, published) = watcher.await.unwrap();
    assert_once_in_order("MQTT on B", &published, TOTAL);
    assert_once_in_order("REST poll on B", &poller.await.unwrap(), TOTAL);
    // Nothing more comes: no copy delivered late.
    ws.quiet(Duration::from_millis(300)).await;
    watcher.quiet(Duration::from_millis(300)).await;
    watcher.disconnect().await;
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Commands: created on B, executed by an MQTT device on A, the update waited for on B.

/// A command created over REST on B reaches the MQTT device on A (subscribed to its `dh/command/...`
/// topic); the device's `command/update` — published to `dh/command_update/...`, or as a `dh/request`
/// action — wakes a REST wait (`GET /device/{id}/command/{commandId}/poll`) on B with the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_crosses_to_an_mqtt_device_on_another_instance_and_its_update_wakes_a_wait_back() {
    skip_unless_backend!();
    let (a, b, _dir, _database) = two_instances().await;
    let mut device = Mqtt::login(&a, "actuator-a", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    assert_eq!(device.subscribe(&format!("dh/command/1/1/{SAMPLE_DEVICE}/#")).await, GRANTED);

    for (n, way) in ["topic", "request"].into_iter().enumerate() {
        let command = format!("switch-{way}");
        let body = json!({"command": command, "parameters": {"n": n}, "lifetime": 60});
        let created = b.post(&b.admin, &format!("/device/{SAMPLE_DEVICE}/command"), body).await.expect(201)["id"]
            .as_i64()
            .unwrap();
        let m = device.msg().await;
        assert_eq!(m.topic, format!("dh/command/1/1/{SAMPLE_DEVICE}/{command}"), "{way}");
        assert_eq!(m.payload["action"], "command/insert", "{way}: {}", m.payload);
        assert_eq!(m.payload["command"]["id"], created, "{way}: {}", m.payload);
        assert_eq!(m.payload["command"]["parameters"], json!({"n": n}), "{way}");

        // The wait is registered on B before the device answers: it must be woken, not find the
        // update already made.
        let registered = live_subscriptions(&b).await;
        let wait = {
            let url = format!("{}/device/{SAMPLE_DEVICE}/command/{created}/poll?waitTimeout=30", b.base);
            let (client, token) = (b.client.clone(), b.admin.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null), started.elapsed())
            })
        };
        wait_new_subscriptions(&b, registered, 1).await;
        let result = json!({"done": way});
        match way {
            "topic" => {
                let topic = format!("dh/command_update/1/1/{SAMPLE_DEVICE}/{command}");
                device.publish_json(&topic, json!({"id": created, "status": "done", "result": result})).await;
            }
            _ => {
                let update = json!({"deviceId": SAMPLE_DEVICE, "commandId": created,
                                    "command": {"status": "done", "result": result}});
                device.ok("command/update", update, &[]).await;
            }
        }
        let (status, waited, took) = wait.await.unwrap();
        assert_eq!(status, 200, "{way}: {waited}");
        assert_eq!(waited["id"], created, "{way}: {waited}");
        assert_eq!(waited["status"], "done", "{way}: {waited}");
        assert_eq!(waited["result"], result, "{way}: {waited}");
        assert!(took < Duration::from_secs(20), "{way}: the wait ended by its timeout ({took:?}), not the update");
    }
    device.disconnect().await;
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// An instance killed mid-ingest.

/// Seconds between heartbeats, and of silence after which an instance is lost, in the kill test.
const HEARTBEAT_SECS: u64 = 1;
const NODE_TIMEOUT_SECS: u64 = 3;

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `hivehub serve` as a process of its own; killed (SIGKILL) when dropped.
struct Instance {
    node: String,
    child: Child,
    http: u16,
    mqtt: u16,
    /// Its log (stdout and stderr), for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

impl Instance {
    /// Starts `hivehub serve` on `database_url` as cluster node `node`, with fresh ports, and waits
    /// until its HTTP and MQTT listeners accept connections.
    async fn start(dir: &std::path::Path, database_url: &str, node: &str) -> Instance {
        let (http, mqtt) = (free_port(), free_port());
        let mut child = Command::new(BIN)
            .arg("serve")
            .current_dir(dir)
            .env("HIVEHUB__HTTP__LISTEN", format!("127.0.0.1:{http}"))
            .env("HIVEHUB__MQTT__LISTEN", format!("127.0.0.1:{mqtt}"))
            .env("HIVEHUB__DATABASE__URL", database_url)
            .env("HIVEHUB__AUTH__ADMIN_LOGIN", ADMIN_LOGIN)
            .env("HIVEHUB__AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("HIVEHUB__CLUSTER__NODE_ID", node)
            .env("HIVEHUB__CLUSTER__HEARTBEAT_SECS", HEARTBEAT_SECS.to_string())
            .env("HIVEHUB__CLUSTER__NODE_TIMEOUT_SECS", NODE_TIMEOUT_SECS.to_string())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hivehub runs");
        // Both pipes are drained, so a chatty instance never blocks on a full pipe.
        let log = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut instance = Instance { node: node.to_string(), child, http, mqtt, log };
        instance.wait_listening().await;
        instance
    }

    /// Waits until both listeners accept connections and the administrator logs in: on a first
    /// start the listeners are bound before the administrator is created.
    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [self.http, self.mqtt] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                self.assert_alive(deadline, &format!("listening on {port}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let login = json!({"login": ADMIN_LOGIN, "password": ADMIN_PASSWORD});
        let url = format!("http://127.0.0.1:{}/api/rest/token", self.http);
        let client = reqwest::Client::new();
        while client.post(&url).json(&login).send().await.map(|r| r.status().as_u16()).ok() != Some(201) {
            self.assert_alive(deadline, "the administrator logging in");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn assert_alive(&mut self, deadline: Instant, waiting_for: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}): {}", self.node, self.log());
        }
        assert!(Instant::now() < deadline, "{}: not {waiting_for} within 30 s: {}", self.node, self.log());
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL: no shutdown, no goodbye to the database or the clients.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an ingesting device did.
#[derive(Debug, Default)]
struct Ingest {
    id: String,
    /// Every publish sent: (seq, the node it was sent to).
    sent: Vec<(u64, String)>,
    /// Those PUBACKed.
    acked: Vec<(u64, String)>,
    /// Why it left an instance (connection errors).
    errors: Vec<String>,
}

/// A device publishing `count` QoS 1 notifications one at a time (the next once the last is
/// PUBACKed), to the first of `nodes` (name, MQTT port) that works: when its connection fails it
/// moves to the next and sends the unacknowledged publish again — what a device behind a load
/// balancer does when its instance dies. The payload names the node each copy was sent to. After the
/// last PUBACK it stays connected until `release`.
async fn ingest(
    id: String,
    nodes: Vec<(String, u16)>,
    count: u64,
    acks: Arc<AtomicUsize>,
    mut release: watch::Receiver<bool>,
) -> Ingest {
    let topic = format!("dh/notification/1/1/{SAMPLE_DEVICE}/ingest");
    let mut log = Ingest { id: id.clone(), ..Ingest::default() };
    let mut seq = 0;
    for (node, port) in nodes {
        let mut options = MqttOptions::new(&id, "127.0.0.1", port);
        options.set_credentials(ADMIN_LOGIN, ADMIN_PASSWORD);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        match connack(&mut eventloop).await {
            Ok(ConnectReturnCode::Success) => {}
            other => {
                log.errors.push(format!("CONNECT to {node}: {other:?}"));
                continue;
            }
        }
        'publishing: while seq < count {
            let payload = json!({"parameters": {"device": id, "seq": seq, "via": node}}).to_string();
            client.publish(&topic, QoS::AtLeastOnce, false, payload).await.unwrap();
            log.sent.push((seq, node.clone()));
            loop {
                match tokio::time::timeout(Duration::from_secs(20), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        log.errors.push(format!("on {node} at seq {seq}: {e}"));
                        break 'publishing;
                    }
                    Err(_) => {
                        log.errors.push(format!("on {node} at seq {seq}: no PUBACK within 20 s"));
                        break 'publishing;
                    }
                }
            }
            log.acked.push((seq, node.clone()));
            acks.fetch_add(1, Ordering::Relaxed);
            seq += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if seq == count {
            // Connected (the session lives on this node) until the test has looked at the sessions.
            let hold = async {
                loop {
                    if eventloop.poll().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = release.wait_for(|r| *r) => {}
                _ = hold => log.errors.push(format!("on {node}: connection lost after the last publish")),
            }
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
            return log;
        }
    }
    log
}

/// Two instances as separate processes of the real binary; MQTT devices publish QoS 1 on both; A is
/// killed with SIGKILL mid-ingest. A's devices reconnect to B and finish there. Every PUBACKed
/// publish is stored exactly once (a copy A may have committed without acknowledging it is at most
/// once more, under A's name), nothing is lost, B's own devices never notice; and B marks the
/// sessions that died with A `node-lost` soon after A's heartbeats stop, without touching those that
/// moved to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_mid_ingest_loses_nothing_acknowledged_and_its_devices_carry_on() {
    skip_unless_backend!();
    const PER_DEVICE: u64 = 300;
    const ON_A: usize = 4;
    const ON_B: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let mut a = Instance::start(dir.path(), &database.url, "node-a").await;
    let b = Instance::start(dir.path(), &database.url, "node-b").await;
    let (node_a, node_b) = ((a.node.clone(), a.mqtt), (b.node.clone(), b.mqtt));

    // Sessions on A that will not reconnect: B must mark them lost.
    let mut idle = Vec::new();
    for i in 0..2 {
        let mut options = MqttOptions::new(format!("idle-a-{i}"), "127.0.0.1", a.mqtt);
        options.set_credentials(ADMIN_LOGIN, ADMIN_PASSWORD);
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        let code = connack(&mut eventloop).await;
        assert_eq!(code, Ok(ConnectReturnCode::Success), "{}", a.log());
        idle.push((client, tokio::spawn(async move { while eventloop.poll().await.is_ok() {} })));
    }

    let acks = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    let mut devices = Vec::new();
    for i in 0..ON_A + ON_B {
        let (id, nodes) = if i < ON_A {
            (format!("dev-a-{i}"), vec![node_a.clone(), node_b.clone()])
        } else {
            (format!("dev-b-{i}"), vec![node_b.clone()])
        };
        devices.push(tokio::spawn(ingest(id, nodes, PER_DEVICE, acks.clone(), released.clone())));
    }
    // Mid-ingest: once a quarter of everything is acknowledged.
    let total = (ON_A + ON_B) * PER_DEVICE as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.load(Ordering::Relaxed) < total / 4 {
        assert!(Instant::now() < deadline, "ingest too slow: {} acks in 60 s", acks.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.kill();
    let killed = Instant::now();
    println!("killed node-a after {} of {total} acks", acks.load(Ordering::Relaxed));

    let db = TestDb::connect(&database.url).await;
    // NODE-LOST: B sees A's heartbeats stop, and marks A's sessions lost — after the timeout, checked
    // every heartbeat (plus a second of slack for a loaded machine).
    let lost_within = Duration::from_secs(NODE_TIMEOUT_SECS + 2 * HEARTBEAT_SECS + 1);
    let idle_sessions = "SELECT client_id, connected, disconnect_reason FROM mqtt_session \
                         WHERE client_id LIKE 'idle-a-%' ORDER BY client_id";
    let lost = vec![
        vec![json!("idle-a-0"), json!(false), json!("node-lost")],
        vec![json!("idle-a-1"), json!(false), json!("node-lost")],
    ];
    let mut marked = None;
    while killed.elapsed() < lost_within {
        let rows = db.fetch_all(idle_sessions, &[]).await;
        if rows == lost {
            marked = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle_rows = db.fetch_all(idle_sessions, &[]).await;
    println!("A's idle sessions {idle_rows:?}, marked lost after {marked:?}");
    assert!(marked.is_some(), "not marked node-lost within {lost_within:?} of the kill: {idle_rows:?}");

    // Wait for every device to finish, then look at the moved sessions while they are still on B.
    let finish = Instant::now() + Duration::from_secs(120);
    while acks.load(Ordering::Relaxed) < total && Instant::now() < finish {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = db
        .fetch_all(
            "SELECT client_id, connected, disconnect_reason FROM mqtt_session WHERE client_id LIKE 'dev-a-%' \
             ORDER BY client_id",
            &[],
        )
        .await;
    release.send(true).unwrap();
    let mut logs = Vec::new();
    for d in devices {
        logs.push(d.await.unwrap());
    }
    for (client, task) in idle {
        drop(client);
        task.abort();
    }

    for log in &logs {
        let acked: BTreeSet<u64> = log.acked.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(acked.len() as u64, PER_DEVICE, "{} did not finish: {log:#?}\n--- B ---\n{}", log.id, b.log());
        if log.id.starts_with("dev-b") {
            assert!(log.errors.is_empty(), "{}: B's device noticed A's death: {log:#?}", log.id);
        } else {
            let on = |node: &str| log.acked.iter().filter(|(_, n)| n == node).count();
            assert!(on("node-a") > 0 && on("node-b") > 0, "{}: not killed mid-ingest: {log:#?}", log.id);
        }
    }
    for row in &moved {
        assert_eq!(row[1], json!(true), "a session that moved to B is no longer connected: {moved:?}");
    }

    // The database: every acknowledged publish once; an unacknowledged copy at most once.
    let rows = db
        .fetch_all(
            "SELECT parameters FROM device_notification WHERE device_id = $1 AND notification = 'ingest'",
            &[SAMPLE_DEVICE.into()],
        )
        .await;
    let mut stored: BTreeMap<(String, u64, String), usize> = BTreeMap::new();
    for row in rows {
        let p: Value = serde_json::from_str(row[0].as_str().expect("parameters text")).unwrap();
        let key = (
            p["device"].as_str().unwrap().to_string(),
            p["seq"].as_u64().unwrap(),
            p["via"].as_str().unwrap().to_string(),
        );
        *stored.entry(key).or_default() += 1;
    }
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let mut unacknowledged = Vec::new();
    for log in &logs {
        for (seq, node) in &log.acked {
            let key = (log.id.clone(), *seq, node.clone());
            assert_eq!(stored.get(&key), Some(&1), "acknowledged but not stored: {key:?}");
        }
        for (seq, node) in log.sent.iter().filter(|s| !log.acked.contains(s)) {
            unacknowledged.push((
                log.id.clone(),
                *seq,
                node.clone(),
                stored.contains_key(&(log.id.clone(), *seq, node.clone())),
            ));
        }
    }
    let acknowledged: usize = logs.iter().map(|l| l.acked.len()).sum();
    let strays: Vec<_> =
        stored.keys().filter(|k| !logs.iter().any(|l| l.id == k.0 && l.sent.contains(&(k.1, k.2.clone())))).collect();
    assert!(strays.is_empty(), "stored but never sent: {strays:?}");
    println!(
        "{acknowledged} acknowledged and stored once; unacknowledged copies (device, seq, node, stored): {unacknowledged:?}"
    );
    db.close().await;
    drop(b);
}
