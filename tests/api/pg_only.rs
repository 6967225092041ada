//! Tests that need PostgreSQL itself, not only a database on it: a server restarted under a running
//! hub (README "Databases: SQLite or PostgreSQL": 503 while it is away, MQTT publishes waiting for it
//! within `[mqtt] database_grace_secs`, nothing acknowledged lost), and
//! `hivehub migrate-db` from SQLite to PostgreSQL and back into service (ids, passwords, tokens).
//! Declared in `postgres.rs` only.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{json, Value};

use super::TestHub;
use crate::common::mqtt::{with_credentials, Mqtt};
use crate::common::pg::{start_server, stop_server, DbLease, PgServer};
use crate::common::{Backend, Sqlite, TestHubOn, ADMIN_LOGIN, ADMIN_PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_hivehub");
/// The seeded sample device: network 1, device type 1.
const SAMPLE_DEVICE: &str = "e50d6085-2aba-48e9-b1c3-73c673e414be";
const UNAVAILABLE: &str = "The database is unavailable; try again later";
/// The longest a request may take while the database is away (the pool waits 10 s for a connection).
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------------
// The hub rides out a database restart.

/// One REST insert of the outage test.
#[derive(Debug, Clone)]
struct RestTry {
    seq: u64,
    /// Since the test's start.
    started: Duration,
    took: Duration,
    /// The status and body, or what went wrong (transport error, no answer within `ANSWER_WITHIN`).
    outcome: Result<(u16, String), String>,
}

impl RestTry {
    fn status(&self) -> Option<u16> {
        self.outcome.as_ref().ok().map(|(s, _)| *s)
    }
    fn ended(&self) -> Duration {
        self.started + self.took
    }
}

/// `POST /device/{SAMPLE_DEVICE}/notification` with `{"seq": seq}`, bounded by `ANSWER_WITHIN`.
async fn rest_insert(client: &reqwest::Client, base: &str, token: &str, seq: u64, t0: Instant) -> RestTry {
    let started = t0.elapsed();
    let at = Instant::now();
    let request = client
        .post(format!("{base}/device/{SAMPLE_DEVICE}/notification"))
        .bearer_auth(token)
        .json(&json!({"notification": "rest", "parameters": {"seq": seq}}))
        .send();
    let outcome = match tokio::time::timeout(ANSWER_WITHIN, async {
        let resp = request.await.map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("body failed: {e}"))?;
        Ok::<_, String>((status, text))
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {ANSWER_WITHIN:?}")),
    };
    RestTry { seq, started, took: at.elapsed(), outcome }
}

/// What the MQTT device saw: the seqs PUBACKed (with when) and the errors of its event loop.
#[derive(Debug, Default)]
struct MqttLog {
    /// (seq, since the test's start).
    acked: Vec<(u64, Duration)>,
    /// (since the test's start, error).
    errors: Vec<(Duration, String)>,
    /// A seq that was never acknowledged although the client kept reconnecting.
    stuck: Option<u64>,
}

/// A device publishing QoS 1 notifications one at a time (the next once the last is PUBACKed), seqs
/// from `first`, until `stop`. Its event loop is polled again after an error, so rumqttc reconnects
/// and sends the unacknowledged publish again.
async fn mqtt_device(options: rumqttc::MqttOptions, first: u64, stop: Arc<AtomicBool>, t0: Instant) -> MqttLog {
    let topic = format!("dh/notification/1/1/{SAMPLE_DEVICE}/mqtt");
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let mut log = MqttLog::default();
    let mut seq = first;
    'publishing: while !stop.load(Ordering::Relaxed) {
        let payload = json!({"parameters": {"seq": seq}}).to_string();
        client.publish(&topic, QoS::AtLeastOnce, false, payload).await.expect("request channel open");
        let sent = Instant::now();
        loop {
            if sent.elapsed() > Duration::from_secs(60) {
                log.stuck = Some(seq);
                break 'publishing;
            }
            match tokio::time::timeout(Duration::from_secs(20), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                    log.acked.push((seq, t0.elapsed()));
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    log.errors.push((t0.elapsed(), e.to_string()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => log.errors.push((t0.elapsed(), "event loop silent for 20 s".into())),
            }
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hub_rides_out_a_database_restart() {
    skip_unless_backend!();
    let server = Arc::new(PgServer::dedicated());
    let name = server.create_database().await;
    // Requests waiting for a connection during the outage give up after 1 s: they must be answered 503.
    // MQTT publishes are retried instead for the grace period, longer than the outage.
    let hub = TestHub::start_on(server.url(&name), |s| {
        s.database.acquire_timeout_secs = 1;
        s.mqtt.database_grace_secs = 30;
    })
    .await;
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // Four REST writers, seqs 1_000_000 * (w + 1) + i.
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (client, base, token, stop) = (hub.client.clone(), hub.base.clone(), hub.admin.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut tries = Vec::new();
            let mut seq = 1_000_000 * (w + 1);
            while !stop.load(Ordering::Relaxed) {
                tries.push(rest_insert(&client, &base, &token, seq, t0).await);
                seq += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tries
        }));
    }
    // One MQTT device, seqs from 10_000_000.
    let device = tokio::spawn(mqtt_device(
        with_credentials(&hub, "outage-publisher", ADMIN_LOGIN, ADMIN_PASSWORD),
        10_000_000,
        stop.clone(),
        t0,
    ));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stop_began = t0.elapsed();
    stop_server(&server).await;
    let stopped = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start_began = t0.elapsed();
    start_server(&server).await;
    let restarted = t0.elapsed();

    // Inserts succeed again within a few seconds, without restarting the hub (seqs from 20_000_000).
    let mut probes = Vec::new();
    let mut seq = 20_000_000;
    let recovered = loop {
        let r = rest_insert(&hub.client, &hub.base, &hub.admin, seq, t0).await;
        seq += 1;
        let ok = r.status() == Some(201);
        probes.push(r);
        if ok {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < restarted + Duration::from_secs(20),
            "no 201 within 20 s of the restart: {probes:#?}\n--- server log ---\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A new MQTT connection publishes QoS 1 and gets its PUBACK (`publish` asserts it within 10 s).
    let mut fresh = Mqtt::login(&hub, "after-restart", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    let fresh_seq = 30_000_000;
    fresh
        .publish(
            &format!("dh/notification/1/1/{SAMPLE_DEVICE}/mqtt"),
            json!({"parameters": {"seq": fresh_seq}}).to_string(),
            QoS::AtLeastOnce,
        )
        .await;
    fresh.disconnect().await;

    // The writers keep going for a while on the recovered database.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tries: Vec<RestTry> = probes;
    for w in writers {
        tries.extend(w.await.unwrap());
    }
    let mqtt = tokio::time::timeout(Duration::from_secs(90), device).await.expect("MQTT device finished").unwrap();
    let finished = t0.elapsed();

    let count = |status: u16| tries.iter().filter(|t| t.status() == Some(status)).count();
    let slowest = tries.iter().map(|t| t.took).max().unwrap_or_default();
    println!(
        "outage: stop {stop_began:?}..{stopped:?}, start {start_began:?}..{restarted:?}, first 201 after it at \
         {recovered:?} ({:?} after the start returned), end {finished:?}; REST: {} tries, {} x 201, {} x 503, \
         slowest {slowest:?}; MQTT: {} acked, {} errors: {:#?}",
        recovered - restarted,
        tries.len(),
        count(201),
        count(503),
        mqtt.acked.len(),
        mqtt.errors.len(),
        mqtt.errors
    );

    // Every answer was a 201 or the documented 503, within ANSWER_WITHIN (never a 500, never a hang).
    let unexpected: Vec<&RestTry> = tries
        .iter()
        .filter(|t| match &t.outcome {
            Ok((201, _)) => false,
            Ok((503, body)) => {
                serde_json::from_str::<Value>(body).ok() != Some(json!({"error": 503, "message": UNAVAILABLE}))
            }
            _ => true,
        })
        .collect();
    assert!(unexpected.is_empty(), "answers other than 201 or the documented 503: {unexpected:#?}");
    assert!(count(503) >= 1, "no 503 seen while the database was away: {} tries", tries.len());
    // 503s only around the outage: not before the stop, and not once the database was back.
    let early: Vec<&RestTry> = tries.iter().filter(|t| t.ended() < stop_began && t.status() != Some(201)).collect();
    assert!(early.is_empty(), "failures before the database stopped: {early:#?}");
    let late: Vec<&RestTry> =
        tries.iter().filter(|t| t.started > recovered + Duration::from_secs(1) && t.status() != Some(201)).collect();
    assert!(late.is_empty(), "failures after the database was back: {late:#?}");
    assert!(
        recovered < restarted + Duration::from_secs(10),
        "inserts succeeded again only {:?} after the restart",
        recovered - restarted
    );
    assert!(tries.iter().any(|t| t.status() == Some(201) && t.ended() < stop_began), "no 201 before the stop");
    assert!(
        tries.iter().filter(|t| t.status() == Some(201) && t.started > recovered).count() >= 4,
        "the writers did not carry on after the restart"
    );

    // The MQTT device got through the outage: acknowledged before and after it, never stuck — and on
    // one connection, the publish sent during the outage waiting for the database within the grace
    // period (with `database_grace_secs = 0` the hub closes the connection instead, and the device
    // resends after reconnecting: see `a_qos1_publish_the_database_cannot_take_...`).
    assert_eq!(mqtt.stuck, None, "a publish was never acknowledged: {mqtt:#?}");
    assert!(mqtt.errors.is_empty(), "the MQTT connection did not ride out the outage: {mqtt:#?}");
    assert!(mqtt.acked.iter().any(|(_, at)| *at < stop_began), "no PUBACK before the stop: {mqtt:#?}");
    assert!(mqtt.acked.iter().any(|(_, at)| *at > restarted), "no PUBACK after the restart: {mqtt:#?}");

    // Everything acknowledged is stored exactly once, and nothing is stored twice.
    let mut acknowledged: Vec<u64> = tries.iter().filter(|t| t.status() == Some(201)).map(|t| t.seq).collect();
    acknowledged.extend(mqtt.acked.iter().map(|(seq, _)| *seq));
    acknowledged.push(fresh_seq);
    let rows = hub
        .sql_fetch_all(
            "SELECT id, notification, parameters, timestamp FROM device_notification \
             WHERE device_id = $1 AND notification IN ('rest', 'mqtt') ORDER BY id",
            &[SAMPLE_DEVICE.into()],
        )
        .await;
    let mut stored: BTreeMap<u64, Vec<Vec<Value>>> = BTreeMap::new();
    for row in rows {
        let parameters: Value = serde_json::from_str(row[2].as_str().expect("parameters text")).unwrap();
        let seq = parameters["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {row:?}"));
        stored.entry(seq).or_default().push(row);
    }
    let twice: Vec<(&u64, &Vec<Vec<Value>>)> = stored.iter().filter(|(_, rows)| rows.len() > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:#?}\nMQTT: {mqtt:#?}");
    let lost: Vec<u64> = acknowledged.iter().copied().filter(|seq| !stored.contains_key(seq)).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}\nMQTT: {mqtt:#?}");
    let unacknowledged_stored: Vec<&u64> = stored.keys().filter(|seq| !acknowledged.contains(seq)).collect();
    println!("stored: {} seqs; stored though answered 503: {unacknowledged_stored:?}", stored.len());

    hub.stop().await;
    drop(server);
}

// ---------------------------------------------------------------------------------------------------
// `[mqtt] database_grace_secs`: a QoS 1 publish the database cannot take waits for it.

/// The rows of `device_notification` for the sample device whose name is `name`, as their `seq`
/// parameters (in id order, repeated when stored more than once).
async fn stored_seqs(hub: &TestHub, name: &str) -> Vec<u64> {
    let rows = hub
        .sql_fetch_all(
            "SELECT parameters FROM device_notification WHERE device_id = $1 AND notification = $2 ORDER BY id",
            &[SAMPLE_DEVICE.into(), name.into()],
        )
        .await;
    rows.iter()
        .map(|row| {
            let parameters: Value = serde_json::from_str(row[0].as_str().expect("parameters text")).unwrap();
            parameters["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {row:?}"))
        })
        .collect()
}

/// A device publishes QoS 1 while the database is away for a few seconds, shorter than the grace
/// period: the connection stays open (its 1 s keepalive PINGREQs are answered meanwhile, or rumqttc
/// would give up on it), nothing is acknowledged while the database is away, and once it is back
/// both publishes are acknowledged in the order they were sent and stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_publish_waits_for_the_database_within_the_grace_period() {
    skip_unless_backend!();
    let server = Arc::new(PgServer::dedicated());
    let name = server.create_database().await;
    let hub = TestHub::start_on(server.url(&name), |s| {
        s.database.acquire_timeout_secs = 1;
        s.mqtt.database_grace_secs = 30;
    })
    .await;
    let topic = format!("dh/notification/1/1/{SAMPLE_DEVICE}/grace");
    let mut options = with_credentials(&hub, "grace-publisher", ADMIN_LOGIN, ADMIN_PASSWORD);
    options.set_keep_alive(Duration::from_secs(1));
    let mut device = Mqtt::connect(options).await;
    // Packet id 1, acknowledged at once.
    device.publish(&topic, json!({"parameters": {"seq": 1}}).to_string(), QoS::AtLeastOnce).await;

    stop_server(&server).await;
    // Packet ids 2 and 3, sent while the database is away.
    for seq in [2, 3] {
        device
            .client
            .publish(&topic, QoS::AtLeastOnce, false, json!({"parameters": {"seq": seq}}).to_string())
            .await
            .unwrap();
    }
    match tokio::time::timeout(Duration::from_secs(4), device.puback.recv()).await {
        Err(_) => {}
        Ok(Some(pkid)) => panic!("PUBACK {pkid} while the database was away"),
        // The client's event loop ended: e.g. rumqttc's "Last pingreq isn't acked".
        Ok(None) => panic!("the connection was closed during the outage"),
    }
    start_server(&server).await;

    let mut acked = Vec::new();
    while acked.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(20), device.puback.recv()).await {
            Ok(Some(pkid)) => acked.push(pkid),
            other => panic!("no PUBACK within 20 s of the restart ({other:?}); acked {acked:?}\n{}", server.log()),
        }
    }
    assert_eq!(acked, [2, 3], "PUBACKs in the order of the publishes");
    assert!(!device.closed_within(Duration::from_millis(500)).await, "the connection was closed");
    // The connection carries on as before.
    device.publish(&topic, json!({"parameters": {"seq": 4}}).to_string(), QoS::AtLeastOnce).await;
    assert_eq!(stored_seqs(&hub, "grace").await, [1, 2, 3, 4], "each publish stored exactly once");
    device.disconnect().await;
    hub.stop().await;
    drop(server);
}

/// An outage longer than the grace period closes the connection without PUBACK once the grace
/// period is over (1 s here), and at once with a grace of 0; nothing unacknowledged is stored, and
/// new connections publish again once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_publish_the_database_cannot_take_within_the_grace_period_closes_the_connection() {
    skip_unless_backend!();
    let server = Arc::new(PgServer::dedicated());
    let name = server.create_database().await;
    let url = server.url(&name);
    let grace = |secs: u64| {
        move |s: &mut hivehub::config::Settings| {
            s.database.acquire_timeout_secs = 1;
            s.mqtt.database_grace_secs = secs;
        }
    };
    let short = TestHub::start_on(url.clone(), grace(1)).await;
    let none = TestHub::start_on(url.clone(), grace(0)).await;
    let topic = format!("dh/notification/1/1/{SAMPLE_DEVICE}/grace");
    let mut devices = Vec::new();
    for (hub, id) in [(&short, "grace-1s"), (&none, "grace-0s")] {
        devices.push(Mqtt::login(hub, id, ADMIN_LOGIN, ADMIN_PASSWORD).await);
    }

    stop_server(&server).await;
    let stopped = Instant::now();
    for (seq, device) in devices.iter_mut().enumerate() {
        let payload = json!({"parameters": {"seq": seq}}).to_string();
        device.client.publish(&topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    // Grace 0: closed once the first try failed (the pool waits 1 s for a connection).
    assert!(devices[1].closed_within(Duration::from_secs(4)).await, "grace 0: not closed at once");
    let none_closed = stopped.elapsed();
    // Grace 1 s: tries go on for a second; the last may take the 1 s acquire timeout.
    assert!(devices[0].closed_within(Duration::from_secs(6)).await, "grace 1 s: not closed");
    let short_closed = stopped.elapsed();
    println!("closed {none_closed:?} (grace 0) and {short_closed:?} (grace 1 s) after the stop");
    // Both first tries failed at about the same moment (the pool's 1 s acquire timeout); grace 1 s
    // tries for another second after it.
    assert!(short_closed >= none_closed + Duration::from_millis(500), "grace 1 s: closed before the grace was over");
    for device in &mut devices {
        assert!(device.puback.try_recv().is_err(), "{}: acknowledged", device.id);
    }

    start_server(&server).await;
    let mut fresh = Mqtt::login(&short, "grace-fresh", ADMIN_LOGIN, ADMIN_PASSWORD).await;
    fresh.publish(&topic, json!({"parameters": {"seq": 7}}).to_string(), QoS::AtLeastOnce).await;
    fresh.disconnect().await;
    assert_eq!(stored_seqs(&short, "grace").await, [7], "only the acknowledged publish is stored");
    short.stop().await;
    none.stop().await;
    drop(server);
}

// ---------------------------------------------------------------------------------------------------
// migrate-db: SQLite to PostgreSQL, and the hub carries on there.

type SqliteHub = TestHubOn<Sqlite>;

const CLIENT_LOGIN: &str = "migrant";
const CLIENT_PASSWORD: &str = "client-pass-1";
const CONFIG_NAME: &str = "migrated.entry";

/// Runs `hivehub <args>` to its end (at most 120 s); returns (exit code, stdout, stderr).
async fn hivehub(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hivehub runs");
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let read = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let (out, err) = (read(Box::new(out)), read(Box::new(err)));
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hivehub {args:?} did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status.code(), out.join().unwrap(), err.join().unwrap())
    })
    .await
    .unwrap()
}

/// Every read the migration must keep: (path, JSON), as admin.
async fn snapshot<B: Backend>(hub: &TestHubOn<B>, user_id: i64, network_id: i64, type_id: i64) -> Vec<(String, Value)> {
    let mut paths = vec![
        "/network".to_string(),
        format!("/network/{network_id}"),
        "/devicetype".to_string(),
        format!("/devicetype/{type_id}"),
        "/user".to_string(),
        format!("/user/{user_id}"),
        format!("/user/{user_id}/devicetype"),
        "/device".to_string(),
        format!("/configuration/{CONFIG_NAME}"),
    ];
    for device in ["mig-dev-1", "mig-dev-2"] {
        paths.push(format!("/device/{device}"));
        paths.push(format!("/device/{device}/notification?take=1000"));
        paths.push(format!("/device/{device}/command?take=1000"));
    }
    let mut out = Vec::new();
    for path in paths {
        let body = hub.get(&hub.admin, &path).await.expect(200);
        out.push((path, body));
    }
    out
}

/// The admin's `lastLogin` in `/user` changes with every start of a test hub (it logs in): compared
/// apart, the rest of the list must be identical.
fn without_admin_last_login(snapshot: &mut [(String, Value)]) -> Option<Value> {
    let users = snapshot.iter_mut().find(|(p, _)| p == "/user").unwrap().1.as_array_mut().unwrap();
    let admin = users.iter_mut().find(|u| u["login"] == ADMIN_LOGIN).unwrap();
    admin.as_object_mut().unwrap().remove("lastLogin")
}

fn max_id(list: &Value) -> i64 {
    list.as_array().unwrap().iter().map(|v| v["id"].as_i64().unwrap()).max().unwrap()
}

#[tokio::test]
async fn migrate_db_round_trip_keeps_data_passwords_and_tokens() {
    skip_unless_backend!();
    let mut source = SqliteHub::start().await;
    let admin = source.admin.clone();

    let network_id = source
        .post(&admin, "/network", json!({"name": "migrated network", "description": "Ünïcode ✓"}))
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    let type_id = source
        .post(&admin, "/devicetype", json!({"name": "migrated type", "description": "thermometers"}))
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    let (user_id, _) = source.client_user(CLIENT_LOGIN, &[network_id]).await;
    // Device types by assignment rather than "all", so the assignment has to survive too.
    source.delete(&admin, &format!("/user/{user_id}/devicetype/all")).await.expect(204);
    source.put(&admin, &format!("/user/{user_id}/devicetype/{type_id}"), json!({})).await.expect(204);
    for (i, device) in ["mig-dev-1", "mig-dev-2"].iter().enumerate() {
        let body = json!({
            "name": format!("device {i}"),
            "networkId": network_id,
            "deviceTypeId": type_id,
            "data": {"serial": i, "label": "naïve"},
            "isBlocked": i == 1,
        });
        source.put(&admin, &format!("/device/{device}"), body).await.expect(204);
    }
    for n in 0..50 {
        let device = if n % 2 == 0 { "mig-dev-1" } else { "mig-dev-2" };
        let body = json!({"notification": format!("temp-{}", n % 5), "parameters": {"n": n, "t": 20.5 + n as f64, "s": "x\u{e9}"}});
        source.post(&admin, &format!("/device/{device}/notification"), body).await.expect(201);
    }
    for n in 0..20 {
        let device = if n % 2 == 0 { "mig-dev-1" } else { "mig-dev-2" };
        let body = json!({"command": format!("cmd-{}", n % 3), "parameters": {"n": n}, "lifetime": 3600});
        let id =
            source.post(&admin, &format!("/device/{device}/command"), body).await.expect(201)["id"].as_i64().unwrap();
        if n % 3 != 0 {
            let update = json!({"status": format!("done-{n}"), "result": {"ok": n % 2 == 0, "n": n}});
            source.put(&admin, &format!("/device/{device}/command/{id}"), update).await.expect(204);
        }
    }
    source
        .put(&admin, &format!("/configuration/{CONFIG_NAME}"), json!({"value": "kept across the move"}))
        .await
        .expect(200);
    let pair = source
        .request(
            reqwest::Method::POST,
            None,
            "/token",
            Some(json!({"login": CLIENT_LOGIN, "password": CLIENT_PASSWORD})),
        )
        .await
        .expect(201);
    let (access, refresh) =
        (pair["accessToken"].as_str().unwrap().to_string(), pair["refreshToken"].as_str().unwrap().to_string());
    let before = source.get(&access, "/device").await.expect(200);
    assert_eq!(before.as_array().unwrap().len(), 2, "{before}");

    let mut expected = snapshot(&source, user_id, network_id, type_id).await;
    let notifications = expected.iter().find(|(p, _)| p == "/device/mig-dev-1/notification?take=1000").unwrap();
    // 25 inserted and the server's `$device-add`.
    assert_eq!(notifications.1.as_array().unwrap().len(), 26, "{}", notifications.1);

    // Stop the SQLite hub, keeping its directory (and so its database file).
    let from = source.database_settings().url.clone();
    let sqlite_dir = std::mem::replace(&mut source.dir, tempfile::tempdir().unwrap());
    assert_eq!(from, format!("sqlite://{}/hub.db", sqlite_dir.path().display()));
    source.stop().await;

    let (to, _lease) = DbLease::create().await;
    let (code, out, err) = hivehub(&["migrate-db", "--from", &from, "--to", &to]).await;
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("counts verified"), "stdout: {out}\nstderr: {err}");
    println!("migrate-db: {out}{err}");

    // The target is not empty any more: refused, unless --replace.
    let (code, out, err) = hivehub(&["migrate-db", "--from", &from, "--to", &to]).await;
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("not empty") && err.contains("--replace"), "stderr: {err}");
    let (code, out, err) = hivehub(&["migrate-db", "--from", &from, "--to", &to, "--replace"]).await;
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("counts verified"), "stdout: {out}\nstderr: {err}");

    // A hub on the PostgreSQL database (it logs in as admin with the same password).
    let target = TestHub::start_on(to.clone(), |_| {}).await;
    let mut got = snapshot(&target, user_id, network_id, type_id).await;
    let admin_before = without_admin_last_login(&mut expected);
    let admin_after = without_admin_last_login(&mut got);
    for ((path, want), (_, have)) in expected.iter().zip(&got) {
        assert_eq!(have, want, "GET {path} differs after the migration");
    }
    assert!(admin_before.is_some() && admin_after.is_some(), "{admin_before:?} {admin_after:?}");
    assert!(admin_after.unwrap().as_str() >= admin_before.unwrap().as_str(), "the admin's lastLogin went back");

    // The client user: old password, old access token, old refresh token.
    let fresh = target.login(CLIENT_LOGIN, CLIENT_PASSWORD).await;
    assert_eq!(target.get(&fresh, "/device").await.expect(200), before);
    assert_eq!(target.get(&access, "/device").await.expect(200), before);
    let refreshed = target
        .request(reqwest::Method::POST, None, "/token/refresh", Some(json!({"refreshToken": refresh})))
        .await
        .expect(201);
    let refreshed = refreshed["accessToken"].as_str().expect("accessToken");
    assert_eq!(target.get(refreshed, "/device").await.expect(200), before);

    // New rows get fresh ids: the sequences were advanced past the copied ids.
    let old = |path: &str| expected.iter().find(|(p, _)| p == path).unwrap().1.clone();
    let network = target.post(&target.admin, "/network", json!({"name": "after the move"})).await.expect(201);
    assert!(network["id"].as_i64().unwrap() > max_id(&old("/network")), "{network}");
    let device_type = target.post(&target.admin, "/devicetype", json!({"name": "after the move"})).await.expect(201);
    assert!(device_type["id"].as_i64().unwrap() > max_id(&old("/devicetype")), "{device_type}");
    let user = target
        .post(&target.admin, "/user", json!({"login": "newcomer", "password": "newcomer-pass", "role": 1}))
        .await
        .expect(201);
    assert!(user["id"].as_i64().unwrap() > max_id(&old("/user")), "{user}");
    for device in ["mig-dev-1", "mig-dev-2"] {
        let notification = target
            .post(&target.admin, &format!("/device/{device}/notification"), json!({"notification": "after"}))
            .await
            .expect(201);
        let last = max_id(&old(&format!("/device/{device}/notification?take=1000")));
        assert!(notification["id"].as_i64().unwrap() > last, "{notification}");
        let command = target
            .post(&target.admin, &format!("/device/{device}/command"), json!({"command": "after"}))
            .await
            .expect(201);
        let last = max_id(&old(&format!("/device/{device}/command?take=1000")));
        assert!(command["id"].as_i64().unwrap() > last, "{command}");
    }
    target.stop().await;
    drop(sqlite_dir);
}

/// Two hubs on one database (cluster mode's ordering): writers on both insert concurrently for the
/// same device, so both commit in the same milliseconds; pollers on both chain history polls from the
/// timestamp of the last notification they received, and each sees every notification exactly once.
/// Without the cluster-wide message clock a poller would skip rows another instance committed later
/// with an equal or earlier stamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pollers_on_both_instances_see_every_message_exactly_once() {
    skip_unless_backend!();
    const WRITERS_PER_HUB: usize = 4;
    const PER_WRITER: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let a = TestHub::start_on(database.url.clone(), |_| {}).await;
    let b = TestHub::start_on(database.url.clone(), |_| {}).await;
    let path = format!("/device/{SAMPLE_DEVICE}/notification");
    // The cursor every poller starts from.
    a.post(&a.admin, &path, json!({"notification": "start"})).await.expect(201);
    let start = a.get(&a.admin, &format!("{path}?take=1&sortOrder=DESC")).await.expect(200)[0]["timestamp"]
        .as_str()
        .unwrap()
        .to_string();

    let mut pollers = Vec::new();
    for hub in [&a, &b, &a, &b] {
        let (client, url, token, start) =
            (hub.client.clone(), format!("{}{path}/poll", hub.base), hub.admin.clone(), start.clone());
        pollers.push(tokio::spawn(async move {
            let mut cursor = start;
            let mut seen: Vec<(u64, u64)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen.len() < 2 * WRITERS_PER_HUB * PER_WRITER && Instant::now() < deadline {
                let page: Vec<Value> = client
                    .get(&url)
                    .bearer_auth(&token)
                    .query(&[("timestamp", cursor.as_str()), ("waitTimeout", "0"), ("limit", "50")])
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for n in &page {
                    if n["notification"] == "load" {
                        seen.push((n["parameters"]["w"].as_u64().unwrap(), n["parameters"]["i"].as_u64().unwrap()));
                    }
                }
                match page.last() {
                    Some(n) => cursor = n["timestamp"].as_str().unwrap().to_string(),
                    None => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
            seen
        }));
    }
    let mut writers = Vec::new();
    for (h, hub) in [&a, &b].into_iter().enumerate() {
        for w in 0..WRITERS_PER_HUB {
            let (client, url, token) = (hub.client.clone(), format!("{}{path}", hub.base), hub.admin.clone());
            let w = (h * WRITERS_PER_HUB + w) as u64;
            writers.push(tokio::spawn(async move {
                for i in 0..PER_WRITER as u64 {
                    let r = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"notification": "load", "parameters": {"w": w, "i": i}}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 201);
                }
            }));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    for (p, poller) in pollers.into_iter().enumerate() {
        let seen = poller.await.unwrap();
        let mut counts: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        for key in &seen {
            *counts.entry(*key).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(k, _)| *k).collect();
        assert!(twice.is_empty(), "poller {p} got {} notifications twice, e.g. {:?}", twice.len(), twice.first());
        assert_eq!(
            counts.len(),
            2 * WRITERS_PER_HUB * PER_WRITER,
            "poller {p} (on hub {}) skipped notifications",
            if p % 2 == 0 { "A" } else { "B" }
        );
    }
    a.stop().await;
    b.stop().await;
}

/// Two hubs on one database: WebSocket subscribers on both receive every notification inserted on
/// either hub, each exactly once and in commit (timestamp) order — delivered through each hub's commit
/// tail, not only its own writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_subscribers_on_each_instance_get_every_instances_messages_once_in_order() {
    skip_unless_backend!();
    use crate::common::ws::Ws;
    const PER_WRITER: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let database = TestHub::provision(dir.path()).await;
    let a = TestHub::start_on(database.url.clone(), |_| {}).await;
    let b = TestHub::start_on(database.url.clone(), |_| {}).await;
    let mut sessions = Vec::new();
    for hub in [&a, &b] {
        let mut ws = Ws::authenticated(hub, &hub.admin).await;
        let sub = ws.subscribe("notification/subscribe", json!({"deviceId": SAMPLE_DEVICE, "names": ["x"]})).await;
        sessions.push((ws, sub));
    }
    let path = format!("/device/{SAMPLE_DEVICE}/notification");
    let mut writers = Vec::new();
    for (h, hub) in [&a, &b, &a, &b].into_iter().enumerate() {
        let (client, url, token) = (hub.client.clone(), format!("{}{path}", hub.base), hub.admin.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let body = json!({"notification": "x", "parameters": {"w": h, "i": i}});
                let r = client.post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 201);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for (s, (mut ws, sub)) in sessions.into_iter().enumerate() {
        let pushes = ws.pushes(4 * PER_WRITER).await;
        let mut seen = std::collections::BTreeSet::new();
        let mut last = String::new();
        for p in &pushes {
            assert_eq!(p["subscriptionId"].as_u64(), Some(sub));
            let n = &p["notification"];
            assert!(seen.insert((n["parameters"]["w"].as_u64().unwrap(), n["parameters"]["i"].as_u64().unwrap())));
            let ts = n["timestamp"].as_str().unwrap().to_string();
            assert!(ts >= last, "session {s}: pushed out of order: {ts} after {last}");
            last = ts;
        }
        assert_eq!(seen.len(), 4 * PER_WRITER, "session {s}");
        ws.quiet(Duration::from_millis(300)).await;
    }
    a.stop().await;
    b.stop().await;
}
