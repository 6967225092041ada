//! Devices, notifications, commands, long polling and command wait — and the permission matrix
//! around them.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use super::TestHub;
use crate::common::ws::{live_subscriptions, wait_new_subscriptions};

fn ids(list: &Value) -> Vec<i64> {
    list.as_array().unwrap().iter().map(|m| m["id"].as_i64().unwrap()).collect()
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array().unwrap().iter().map(|m| m[key].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn device_registration_defaults_updates_and_server_notifications() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = &hub.admin;
    // Defaults: lowest assigned network of the user, lowest allowed device type.
    hub.put(a, "/device/dev-1", json!({"name": "first"})).await.expect(204);
    let d = hub.get(a, "/device/dev-1").await.expect(200);
    assert_eq!(
        d,
        json!({"id": "dev-1", "name": "first", "data": null, "networkId": 1, "deviceTypeId": 1, "isBlocked": false})
    );
    // Update: data replaced (absent → null), other fields partial.
    hub.put(a, "/device/dev-1", json!({"data": {"fw": 2}, "isBlocked": true})).await.expect(204);
    hub.put(a, "/device/dev-1", json!({"name": "renamed"})).await.expect(204);
    let d = hub.get(a, "/device/dev-1").await.expect(200);
    assert_eq!(d["name"], "renamed");
    assert_eq!(d["data"], Value::Null);
    assert_eq!(d["isBlocked"], true);

    let list = hub.get(a, "/device/dev-1/notification?sortOrder=ASC").await.expect(200);
    assert_eq!(names(&list, "notification"), ["$device-add", "$device-update", "$device-update"]);
    let l = list.as_array().unwrap();
    assert_eq!(l[0]["parameters"]["name"], "first");
    assert_eq!(l[0]["networkId"], 1);
    // $device-update carries only what changed.
    assert_eq!(l[1]["parameters"], json!({"data": {"fw": 2}, "isBlocked": true}));
    assert_eq!(l[2]["parameters"], json!({"name": "renamed", "data": null}));

    // Validation.
    hub.put(a, "/device/bad_id!", json!({"name": "x"}))
        .await
        .expect_error(400, "Device Id can only contain letters, digits and dashes.");
    hub.put(a, "/device/no-name", json!({})).await.expect_error(400, "Invalid request parameters");
    hub.put(a, "/device/x1", json!({"name": "x", "networkId": 999}))
        .await
        .expect_error(400, "Invalid request parameters");
    hub.put(a, "/device/x1", json!({"name": "x", "deviceTypeId": 999}))
        .await
        .expect_error(400, "Invalid request parameters");
    hub.put(a, "/device/x1", json!({"name": "x", "data": "text"}))
        .await
        .expect_error(400, "'parameters' must be JSON Object!");
    hub.put(a, &format!("/device/{}", "a".repeat(49)), json!({"name": "x"}))
        .await
        .expect_error(400, "Device Id can only contain letters, digits and dashes.");
    assert_eq!(hub.get(a, "/device/count").await.expect(200), json!({"count": 2}));

    // Delete removes the device and its messages.
    hub.delete(a, "/device/dev-1").await.expect(204);
    hub.get(a, "/device/dev-1").await.expect_error(404, "Device with such deviceId = dev-1 not found");
    hub.delete(a, "/device/dev-1").await.expect_error(404, "Device with such deviceId = dev-1 not found");
    hub.put(a, "/device/dev-1", json!({"name": "again"})).await.expect(204);
    let list = hub.get(a, "/device/dev-1/notification").await.expect(200);
    assert_eq!(names(&list, "notification"), ["$device-add"]);
}

#[tokio::test]
async fn device_list_filters_and_sorting() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = &hub.admin;
    let n2 = hub.network("second").await;
    hub.put(a, "/device/b-dev", json!({"name": "bravo", "networkId": n2})).await.expect(204);
    hub.put(a, "/device/c-dev", json!({"name": "charlie", "networkId": 1})).await.expect(204);
    let all = hub.get(a, "/device?sortField=name&sortOrder=DESC").await.expect(200);
    assert_eq!(names(&all, "name"), ["charlie", "bravo", "Sample Device"]);
    let by_net = hub.get(a, &format!("/device?networkId={n2}")).await.expect(200);
    assert_eq!(names(&by_net, "id"), ["b-dev"]);
    let by_net_name = hub.get(a, "/device?networkName=second").await.expect(200);
    assert_eq!(names(&by_net_name, "id"), ["b-dev"]);
    let pattern = hub.get(a, "/device?namePattern=%25ar%25&sortField=name").await.expect(200);
    assert_eq!(names(&pattern, "name"), ["charlie"]);
    // LIKE is case-sensitive, as in the reference's PostgreSQL.
    let pattern = hub.get(a, "/device?namePattern=%25AR%25").await.expect(200);
    assert_eq!(pattern, json!([]));
    let pattern = hub.get(a, "/device?namePattern=Sample%25").await.expect(200);
    assert_eq!(names(&pattern, "name"), ["Sample Device"]);
    let page = hub.get(a, "/device?sortField=name&take=1&skip=1").await.expect(200);
    assert_eq!(names(&page, "name"), ["bravo"]);
    assert_eq!(hub.get(a, "/device/count?networkName=second").await.expect(200), json!({"count": 1}));
    hub.get(a, "/device?sortField=bogus").await.expect_error(400, "Invalid request parameters");
    hub.get(a, "/device?sortOrder=sideways").await.expect_error(400, "Unparseable sort order : sideways");
    // Empty query parameters are ignored.
    assert_eq!(hub.get(a, "/device?name=&networkId=").await.expect(200).as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn notifications_insert_get_and_query() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = &hub.admin;
    hub.device("d1", 1).await;
    let r = hub.post(a, "/device/d1/notification", json!({"notification": "temp", "parameters": {"t": 21.5}})).await;
    let location = r.headers.get("location").unwrap().to_str().unwrap().to_string();
    let body = r.expect(201);
    let id = body["id"].as_i64().unwrap();
    assert_eq!(body.as_object().unwrap().len(), 2);
    assert_eq!(location, format!("/api/rest/device/d1/notification/{id}"));
    let ts = body["timestamp"].as_str().unwrap().to_string();
    assert_eq!(ts.len(), 23, "yyyy-MM-ddTHH:mm:ss.SSS: {ts}");

    let got = hub.get(a, &format!("/device/d1/notification/{id}")).await.expect(200);
    assert_eq!(
        got,
        json!({"id": id, "notification": "temp", "deviceId": "d1", "networkId": 1, "deviceTypeId": 1,
               "timestamp": ts, "parameters": {"t": 21.5}})
    );
    hub.get(a, "/device/d1/notification/999999").await.expect_error(404, "Requested notification not found");

    // Client-supplied timestamps are kept; queries range exclusively and sort.
    for (name, t) in
        [("a", "2020-01-01T00:00:01.000"), ("b", "2020-01-01T00:00:02.000"), ("c", "2020-01-01T00:00:03.000")]
    {
        hub.post(a, "/device/d1/notification", json!({"notification": name, "timestamp": t})).await.expect(201);
    }
    let q = hub
        .get(a, "/device/d1/notification?start=2020-01-01T00:00:01.000&end=2020-01-01T00:00:03.000")
        .await
        .expect(200);
    assert_eq!(names(&q, "notification"), ["b"]);
    let q = hub.get(a, "/device/d1/notification?end=2021-01-01&sortOrder=ASC&take=2").await.expect(200);
    assert_eq!(names(&q, "notification"), ["a", "b"]);
    let q = hub.get(a, "/device/d1/notification?end=2021-01-01&skip=1").await.expect(200);
    assert_eq!(names(&q, "notification"), ["b", "a"]);
    let q = hub.get(a, "/device/d1/notification?notification=c").await.expect(200);
    assert_eq!(names(&q, "notification"), ["c"]);
    let q = hub.get(a, "/device/d1/notification?sortField=notification&sortOrder=asc&end=2021-01-01").await.expect(200);
    assert_eq!(names(&q, "notification"), ["a", "b", "c"]);
    hub.get(a, "/device/d1/notification?start=yesterday").await.expect_error(400, "Unparseable timestamp");

    // Bad input changes nothing.
    let before = hub.get(a, "/device/d1/notification?take=1000").await.expect(200).as_array().unwrap().len();
    hub.post(a, "/device/d1/notification", json!({"parameters": {}}))
        .await
        .expect_error(400, "Invalid request parameters");
    hub.post(a, "/device/d1/notification", json!({"notification": "x", "parameters": [1]}))
        .await
        .expect_error(400, "'parameters' must be JSON Object!");
    hub.post(a, "/device/d1/notification", json!({"notification": "x", "timestamp": "soon"}))
        .await
        .expect_error(400, "Unparseable timestamp");
    // Epoch milliseconds of the year 39975: not writable as `yyyy-MM-dd...`, so not accepted.
    hub.post(a, "/device/d1/notification", json!({"notification": "x", "timestamp": 1_199_345_373_621_439_i64}))
        .await
        .expect_error(400, "Unparseable timestamp");
    hub.post(a, "/device/d1/notification", json!({"notification": "$device-add"}))
        .await
        .expect_error(403, "It's forbidden to insert these special notifications: $device-update, $device-add.");
    let r = hub.client.post(hub.url("/device/d1/notification")).bearer_auth(a).body("{not json").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let after = hub.get(a, "/device/d1/notification?take=1000").await.expect(200).as_array().unwrap().len();
    assert_eq!(before, after);
    hub.post(a, "/device/nope/notification", json!({"notification": "x"}))
        .await
        .expect_error(404, "Device with such deviceId = nope not found");
}

#[tokio::test]
async fn commands_insert_update_get_and_query() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = &hub.admin;
    hub.device("d1", 1).await;
    let r = hub
        .post(a, "/device/d1/command", json!({"command": "reboot", "parameters": {"delay": 1}, "lifetime": 30}))
        .await;
    let body = r.expect(201);
    let id = body["id"].as_i64().unwrap();
    let keys: HashSet<&str> = body.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, HashSet::from(["id", "timestamp", "lastUpdated", "userId"]));
    assert_eq!(body["userId"], 1);
    assert_eq!(body["timestamp"], body["lastUpdated"]);

    hub.post(a, "/device/d1/command", json!({"parameters": {}})).await.expect_error(400, "Command is required");
    hub.post(a, "/device/d1/command", json!({"command": "x", "result": "done"}))
        .await
        .expect_error(400, "'parameters' must be JSON Object!");

    // Not yet updated: returnUpdatedCommands hides it.
    hub.get(a, &format!("/device/d1/command/{id}?returnUpdatedCommands=true"))
        .await
        .expect_error(404, &format!("Command with id = {id} not found"));
    hub.put(a, &format!("/device/d1/command/{id}"), json!({"status": "done", "result": {"ok": true}}))
        .await
        .expect(204);
    let c = hub.get(a, &format!("/device/d1/command/{id}?returnUpdatedCommands=true")).await.expect(200);
    assert_eq!(c["status"], "done");
    assert_eq!(c["result"], json!({"ok": true}));
    assert_eq!(c["parameters"], json!({"delay": 1}));
    assert_eq!(c["lifetime"], 30);
    assert!(c.get("isUpdated").is_none());
    assert!(c["lastUpdated"].as_str().unwrap() > c["timestamp"].as_str().unwrap());
    // A partial update keeps the other field.
    hub.put(a, &format!("/device/d1/command/{id}"), json!({"status": "again"})).await.expect(204);
    let c = hub.get(a, &format!("/device/d1/command/{id}")).await.expect(200);
    assert_eq!((c["status"].as_str(), &c["result"]), (Some("again"), &json!({"ok": true})));

    hub.put(a, "/device/d1/command/999999", json!({"status": "x"}))
        .await
        .expect_error(404, "Command with id = 999999 not found");
    hub.delete(a, &format!("/device/d1/command/{id}")).await.expect_error(405, "HTTP 405 Method Not Allowed");

    hub.post(a, "/device/d1/command", json!({"command": "other", "status": "queued"})).await.expect(201);
    let q = hub.get(a, "/device/d1/command?status=queued").await.expect(200);
    assert_eq!(names(&q, "command"), ["other"]);
    let q = hub.get(a, "/device/d1/command?command=reboot").await.expect(200);
    assert_eq!(ids(&q), [id]);
    let q = hub.get(a, "/device/d1/command?sortField=command&sortOrder=ASC").await.expect(200);
    assert_eq!(names(&q, "command"), ["other", "reboot"]);
}

#[tokio::test]
async fn long_poll_history_wakeup_and_timeout() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.admin.clone();
    hub.device("d1", 1).await;
    let first = hub.post(&a, "/device/d1/notification", json!({"notification": "n1"})).await.expect(201);
    let t0 = first["timestamp"].as_str().unwrap().to_string();

    // History after a cursor is returned at once; the cursor is exclusive.
    let p = hub.get(&a, "/device/d1/notification/poll?timestamp=2000-01-01&waitTimeout=30").await.expect(200);
    assert_eq!(names(&p, "notification"), ["$device-add", "n1"]);
    let p = hub.get(&a, &format!("/device/d1/notification/poll?timestamp={t0}&waitTimeout=0")).await.expect(200);
    assert_eq!(p, json!([]));

    // Nothing new: returns [] after waitTimeout.
    let p = hub.get(&a, &format!("/device/d1/notification/poll?timestamp={t0}&waitTimeout=1")).await.expect(200);
    assert_eq!(p, json!([]));

    // A waiting poll is completed by the insert (its timeout is far away).
    let poll_url = format!("/device/d1/notification/poll?timestamp={t0}&waitTimeout=60&names=wake");
    let base = live_subscriptions(&hub).await;
    let (polled, _) = tokio::join!(hub.get(&a, &poll_url), async {
        wait_new_subscriptions(&hub, base, 1).await;
        hub.post(&a, "/device/d1/notification", json!({"notification": "ignored"})).await.expect(201);
        hub.post(&a, "/device/d1/notification", json!({"notification": "wake", "parameters": {"x": 1}}))
            .await
            .expect(201);
    });
    let polled = polled.expect(200);
    assert_eq!(names(&polled, "notification"), ["wake"]);
    assert_eq!(polled[0]["parameters"], json!({"x": 1}));

    // Poll without timestamp only sees future messages.
    let base = live_subscriptions(&hub).await;
    let (polled, _) = tokio::join!(hub.get(&a, "/device/notification/poll?waitTimeout=60"), async {
        wait_new_subscriptions(&hub, base, 1).await;
        hub.post(&a, "/device/d1/notification", json!({"notification": "future"})).await.expect(201);
    });
    assert_eq!(names(&polled.expect(200), "notification"), ["future"]);

    hub.get(&a, "/device/d1/notification/poll?waitTimeout=61")
        .await
        .expect_error(400, "Timeout can't be more than 60 seconds. ");
    hub.get(&a, "/device/d1/notification/poll?waitTimeout=-1")
        .await
        .expect_error(400, "Timeout can't be less than 0 seconds. ");
    hub.get(&a, "/device/d1/command/poll?limit=-1").await.expect_error(400, "Limit can't be less than 0.");
    hub.get(&a, "/device/d1/notification/poll?waitTimeout=x").await.expect_error(400, "Invalid request parameters");
}

#[tokio::test]
async fn poll_many_across_devices_and_networks() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.admin.clone();
    let n2 = hub.network("net-2").await;
    let n3 = hub.network("net-3").await;
    hub.device("d2", n2).await;
    hub.device("d3", n3).await;
    for d in ["d2", "d3"] {
        hub.post(
            &a,
            &format!("/device/{d}/notification"),
            json!({"notification": "m", "timestamp": "2030-01-01T00:00:00.000"}),
        )
        .await
        .expect(201);
        hub.post(&a, &format!("/device/{d}/command"), json!({"command": "c", "timestamp": "2030-01-01T00:00:00.000"}))
            .await
            .expect(201);
    }
    let cursor = "2029-12-31T23:59:59.999";
    let p = hub.get(&a, &format!("/device/notification/poll?timestamp={cursor}&waitTimeout=0")).await.expect(200);
    assert_eq!(names(&p, "deviceId"), ["d2", "d3"]);
    let p = hub
        .get(&a, &format!("/device/notification/poll?timestamp={cursor}&networkIds={n3}&waitTimeout=0"))
        .await
        .expect(200);
    assert_eq!(names(&p, "deviceId"), ["d3"]);
    let p = hub
        .get(
            &a,
            &format!("/device/notification/poll?timestamp={cursor}&networkIds={n2},{n3}&deviceId=d2&waitTimeout=0"),
        )
        .await
        .expect(200);
    assert_eq!(names(&p, "deviceId"), ["d2"]);
    let p = hub
        .get(&a, &format!("/device/command/poll?timestamp={cursor}&deviceTypeIds=1&waitTimeout=0"))
        .await
        .expect(200);
    assert_eq!(names(&p, "deviceId"), ["d2", "d3"]);
    let p = hub.get(&a, &format!("/device/command/poll?timestamp={cursor}&names=zzz&waitTimeout=0")).await.expect(200);
    assert_eq!(p, json!([]));
    // Admins get 404 for unknown networks and devices.
    hub.get(&a, "/device/notification/poll?networkIds=4242&waitTimeout=0")
        .await
        .expect_error(404, "Networks with such networkIds wasn't found: {[4242]}");
    hub.get(&a, "/device/notification/poll?deviceTypeIds=4242&waitTimeout=0")
        .await
        .expect_error(404, "Device types with such deviceTypeIds wasn't found: {[4242]}");
    hub.get(&a, "/device/notification/poll?deviceId=ghost&waitTimeout=0")
        .await
        .expect_error(404, "Device with such deviceId = ghost not found");

    // A network-wide poll wakes for a device registered after it started.
    let url = format!("/device/notification/poll?networkIds={n3}&names=late&waitTimeout=60");
    let base = live_subscriptions(&hub).await;
    let (polled, _) = tokio::join!(hub.get(&a, &url), async {
        wait_new_subscriptions(&hub, base, 1).await;
        hub.device("d-late", n3).await;
        hub.post(&a, "/device/d-late/notification", json!({"notification": "late"})).await.expect(201);
    });
    assert_eq!(names(&polled.expect(200), "deviceId"), ["d-late"]);
}

#[tokio::test]
async fn command_poll_updates_and_wait() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.admin.clone();
    hub.device("d1", 1).await;
    // New commands wake a command poll.
    let base = live_subscriptions(&hub).await;
    let (polled, _) = tokio::join!(hub.get(&a, "/device/d1/command/poll?waitTimeout=60"), async {
        wait_new_subscriptions(&hub, base, 1).await;
        hub.post(&a, "/device/d1/command", json!({"command": "go"})).await.expect(201);
    });
    let polled = polled.expect(200);
    assert_eq!(names(&polled, "command"), ["go"]);
    let id = polled[0]["id"].as_i64().unwrap();

    // Wait: 204 on timeout or waitTimeout=0, then the updated command.
    let r = hub.get(&a, &format!("/device/d1/command/{id}/poll?waitTimeout=0")).await;
    assert_eq!(r.status.as_u16(), 204);
    let r = hub.get(&a, &format!("/device/d1/command/{id}/poll?waitTimeout=1")).await;
    assert_eq!(r.status.as_u16(), 204);
    let r = hub.get(&a, "/device/d1/command/999999/poll?waitTimeout=0").await;
    assert_eq!(r.status.as_u16(), 204);

    let wait_url = format!("/device/d1/command/{id}/poll?waitTimeout=60");
    let upd_url = "/device/d1/command/poll?returnUpdatedCommands=true&waitTimeout=60";
    let base = live_subscriptions(&hub).await;
    let (waited, updated_poll, _) = tokio::join!(hub.get(&a, &wait_url), hub.get(&a, upd_url), async {
        wait_new_subscriptions(&hub, base, 2).await;
        // A new command does not complete a returnUpdatedCommands poll; the update does.
        hub.post(&a, "/device/d1/command", json!({"command": "other"})).await.expect(201);
        hub.put(&a, &format!("/device/d1/command/{id}"), json!({"status": "ok", "result": {"v": 1}})).await.expect(204);
    });
    let waited = waited.expect(200);
    assert_eq!((waited["id"].as_i64(), waited["status"].as_str()), (Some(id), Some("ok")));
    let updated_poll = updated_poll.expect(200);
    assert_eq!(ids(&updated_poll), [id]);
    assert_eq!(updated_poll[0]["result"], json!({"v": 1}));

    // Already updated: wait answers at once; update history uses lastUpdated as the cursor.
    let r = hub.get(&a, &format!("/device/d1/command/{id}/poll?waitTimeout=0")).await.expect(200);
    assert_eq!(r["status"], "ok");
    let p = hub
        .get(&a, "/device/d1/command/poll?returnUpdatedCommands=true&timestamp=2000-01-01&waitTimeout=0")
        .await
        .expect(200);
    assert_eq!(ids(&p), [id]);
    let last = p[0]["lastUpdated"].as_str().unwrap();
    let p = hub
        .get(&a, &format!("/device/d1/command/poll?returnUpdatedCommands=true&timestamp={last}&waitTimeout=0"))
        .await
        .expect(200);
    assert_eq!(p, json!([]));
}

/// The exactly-once promise: writers hammer inserts concurrently (many per millisecond) while pollers
/// chain their cursors (timestamp of the last message received). Every poller must see every message
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chained_poll_cursors_never_skip_or_repeat() {
    skip_unless_backend!();
    const WRITERS: usize = 16;
    const PER_WRITER: usize = 60;
    const POLLERS: usize = 4;
    let hub = std::sync::Arc::new(TestHub::start().await);
    let a = hub.admin.clone();
    for w in 0..4 {
        hub.device(&format!("hammer-{w}"), 1).await;
    }
    let start = hub.get(&a, "/info").await.expect(200)["serverTimestamp"].as_str().unwrap().to_string();

    let mut pollers = Vec::new();
    for p in 0..POLLERS {
        let hub = hub.clone();
        let a = a.clone();
        let start = start.clone();
        pollers.push(tokio::spawn(async move {
            let mut cursor = start;
            let mut seen: Vec<i64> = Vec::new();
            let mut stamps = HashSet::new();
            // Half the pollers watch the devices by network, half unfiltered.
            let scope = if p % 2 == 0 { "&networkIds=1" } else { "" };
            // Slow pollers let history pile up beyond one page (100), so pages end mid-stream.
            let pause = Duration::from_millis(if p < 2 { 0 } else { 250 });
            while seen.len() < WRITERS * PER_WRITER {
                let url = format!("/device/notification/poll?names=hammer&timestamp={cursor}&waitTimeout=5{scope}");
                let batch = hub.get(&a, &url).await.expect(200);
                tokio::time::sleep(pause).await;
                for m in batch.as_array().unwrap() {
                    seen.push(m["id"].as_i64().unwrap());
                    cursor = m["timestamp"].as_str().unwrap().to_string();
                    stamps.insert(cursor.clone());
                }
            }
            (seen, stamps.len())
        }));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let hub = hub.clone();
        let a = a.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..PER_WRITER {
                let body = json!({"notification": "hammer", "parameters": {"w": w, "i": i}});
                let r = hub.post(&a, &format!("/device/hammer-{}/notification", w % 4), body).await.expect(201);
                ids.push(r["id"].as_i64().unwrap());
            }
            ids
        }));
    }
    let mut written = HashSet::new();
    for w in writers {
        for id in w.await.unwrap() {
            assert!(written.insert(id), "duplicate id {id} from inserts");
        }
    }
    assert_eq!(written.len(), WRITERS * PER_WRITER);
    for p in pollers {
        let (seen, distinct_stamps) = tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("a poller never received every message: a cursor skipped some")
            .unwrap();
        // The test only proves something if messages really shared milliseconds.
        assert!(distinct_stamps < seen.len(), "no two messages shared a millisecond");
        let unique: HashSet<i64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "a poller received a message twice");
        assert_eq!(unique, written, "a poller's messages differ from the inserted ones");
    }
}

/// The same promise for history pages: a query cut by `limit` never splits one millisecond.
#[tokio::test]
async fn limited_history_pages_never_split_a_millisecond() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.admin.clone();
    hub.device("d1", 1).await;
    // Five commands share one client-supplied millisecond, three share the next.
    for i in 0..5 {
        hub.post(&a, "/device/d1/command", json!({"command": format!("a{i}"), "timestamp": "2030-01-01T00:00:00.001"}))
            .await
            .expect(201);
    }
    for i in 0..3 {
        hub.post(&a, "/device/d1/command", json!({"command": format!("b{i}"), "timestamp": "2030-01-01T00:00:00.002"}))
            .await
            .expect(201);
    }
    let base = "/device/d1/command/poll?waitTimeout=0";
    // limit 6 would cut the second millisecond: the page stops after the first.
    let p = hub.get(&a, &format!("{base}&timestamp=2030-01-01T00:00:00.000&limit=6")).await.expect(200);
    assert_eq!(p.as_array().unwrap().len(), 5);
    // limit 3 is smaller than one millisecond's rows: the whole millisecond comes anyway.
    let p = hub.get(&a, &format!("{base}&timestamp=2030-01-01T00:00:00.000&limit=3")).await.expect(200);
    assert_eq!(p.as_array().unwrap().len(), 5);
    let p = hub.get(&a, &format!("{base}&timestamp=2030-01-01T00:00:00.001&limit=3")).await.expect(200);
    assert_eq!(names(&p, "command"), ["b0", "b1", "b2"]);
}

/// A client limited to network A sees and changes nothing of network B, on every endpoint.
#[tokio::test]
async fn client_of_network_a_cannot_reach_network_b() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.admin.clone();
    let net_a = hub.network("net-a").await;
    let net_b = hub.network("net-b").await;
    hub.device("dev-a", net_a).await;
    hub.device("dev-b", net_b).await;
    hub.post(&a, "/device/dev-b/notification", json!({"notification": "secret", "timestamp": "2030-01-01"}))
        .await
        .expect(201);
    let cb = hub
        .post(&a, "/device/dev-b/command", json!({"command": "secret", "timestamp": "2030-01-01"}))
        .await
        .expect(201);
    let cmd_b = cb["id"].as_i64().unwrap();
    let (_, c) = hub.client_user("client-a", &[net_a]).await;

    // Lists and counts.
    assert_eq!(names(&hub.get(&c, "/device").await.expect(200), "id"), ["dev-a"]);
    assert_eq!(hub.get(&c, "/device/count").await.expect(200), json!({"count": 1}));
    assert_eq!(hub.get(&c, &format!("/device?networkId={net_b}")).await.expect(200), json!([]));
    let nets = hub.get(&c, "/network").await.expect(200);
    assert_eq!(ids(&nets), [net_a]);
    assert_eq!(hub.get(&c, "/network/count").await.expect(200), json!({"count": 1}));

    // Gets, inserts, updates, deletes: 403 (also for devices that do not exist).
    for path in [
        "/device/dev-b".to_string(),
        "/device/ghost".to_string(),
        "/device/dev-b/notification".to_string(),
        "/device/dev-b/command".to_string(),
        format!("/device/dev-b/command/{cmd_b}"),
        "/device/dev-b/notification/poll?waitTimeout=0".to_string(),
        "/device/dev-b/command/poll?waitTimeout=0".to_string(),
        format!("/device/dev-b/command/{cmd_b}/poll?waitTimeout=0"),
        format!("/device/notification/poll?networkIds={net_b}&waitTimeout=0"),
        format!("/device/command/poll?networkIds={net_b}&waitTimeout=0"),
        "/device/notification/poll?deviceId=dev-b&waitTimeout=0".to_string(),
        format!("/network/{net_b}"),
    ] {
        let r = hub.get(&c, &path).await;
        assert_eq!(r.status.as_u16(), 403, "GET {path}: {}", r.text);
    }
    hub.post(&c, "/device/dev-b/notification", json!({"notification": "x"}))
        .await
        .expect_error(403, "Access is denied");
    hub.post(&c, "/device/dev-b/command", json!({"command": "x"})).await.expect_error(403, "Access is denied");
    hub.put(&c, &format!("/device/dev-b/command/{cmd_b}"), json!({"status": "pwned"}))
        .await
        .expect_error(403, "Access is denied");
    hub.put(&c, "/device/dev-b", json!({"name": "pwned"})).await.expect_error(403, "No access to device");
    hub.put(&c, "/device/new-in-b", json!({"name": "x", "networkId": net_b}))
        .await
        .expect_error(403, "No access to network!");
    hub.delete(&c, "/device/dev-b").await.expect_error(403, "Access is denied");
    let still = hub.get(&a, &format!("/device/dev-b/command/{cmd_b}")).await.expect(200);
    assert_eq!(still["status"], Value::Null);
    assert_eq!(hub.get(&a, "/device/dev-b").await.expect(200)["name"], "dev-b");

    // Unfiltered polls never return B's messages, not from history and not live.
    let p = hub.get(&c, "/device/notification/poll?timestamp=2000-01-01&waitTimeout=0").await.expect(200);
    assert!(names(&p, "deviceId").iter().all(|d| d == "dev-a"), "{p}");
    let p = hub.get(&c, "/device/command/poll?timestamp=2000-01-01&waitTimeout=0").await.expect(200);
    assert!(names(&p, "deviceId").iter().all(|d| d == "dev-a"), "{p}");
    let base = live_subscriptions(&hub).await;
    let (polled, _) = tokio::join!(hub.get(&c, "/device/notification/poll?waitTimeout=2"), async {
        wait_new_subscriptions(&hub, base, 1).await;
        hub.post(&a, "/device/dev-b/notification", json!({"notification": "live-secret"})).await.expect(201);
    });
    assert_eq!(polled.expect(200), json!([]));

    // The client works normally inside network A.
    hub.post(&c, "/device/dev-a/notification", json!({"notification": "mine"})).await.expect(201);
    hub.put(&c, "/device/dev-a2", json!({"name": "mine"})).await.expect(204);
    assert_eq!(hub.get(&c, "/device/dev-a2").await.expect(200)["networkId"], net_a);

    // Unassigning network A takes effect at once, even for the existing token.
    hub.delete(&a, &format!("/user/2/network/{net_a}")).await.expect(204);
    hub.get(&c, "/device/dev-a").await.expect_error(403, "Access is denied");
    assert_eq!(hub.get(&c, "/device").await.expect(200), json!([]));
}

#[tokio::test]
async fn action_lists_restrict_admins_too() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.admin.clone();
    hub.device("d1", 1).await;
    let t = hub
        .post(
            &a,
            "/token/create",
            json!({"userId": 1, "actions": ["GetDevice"], "networkIds": ["*"], "deviceTypeIds": ["*"]}),
        )
        .await
        .expect(201);
    let limited = t["accessToken"].as_str().unwrap();
    hub.get(limited, "/device/d1").await.expect(200);
    hub.get(limited, "/device/d1/notification").await.expect_error(403, "Access is denied");
    hub.post(limited, "/device/d1/notification", json!({"notification": "x"}))
        .await
        .expect_error(403, "Access is denied");
    hub.get(limited, "/device/notification/poll?waitTimeout=0").await.expect_error(403, "Access is denied");
    hub.post(limited, "/network", json!({"name": "x"})).await.expect_error(403, "Access is denied");
    // Network scope restricts an admin's token: unknown device → 403 instead of 404.
    let t = hub
        .post(&a, "/token/create", json!({"userId": 1, "actions": ["*"], "networkIds": ["1"], "deviceTypeIds": ["*"]}))
        .await
        .expect(201);
    let scoped = t["accessToken"].as_str().unwrap();
    hub.get(scoped, "/device/ghost").await.expect_error(403, "Access is denied");
    hub.get(&a, "/device/ghost").await.expect_error(404, "Device with such deviceId = ghost not found");
}

#[tokio::test]
async fn everything_survives_a_restart() {
    skip_unless_backend!();
    let hub = TestHub::start().await;
    let a = hub.admin.clone();
    let n = hub.network("persisted").await;
    hub.device("keep-me", n).await;
    let nid = hub.post(&a, "/device/keep-me/notification", json!({"notification": "kept"})).await.expect(201)["id"]
        .as_i64()
        .unwrap();
    let cid =
        hub.post(&a, "/device/keep-me/command", json!({"command": "kept"})).await.expect(201)["id"].as_i64().unwrap();
    hub.put(&a, &format!("/device/keep-me/command/{cid}"), json!({"status": "done"})).await.expect(204);
    hub.client_user("survivor", &[n]).await;

    let hub = hub.restart().await;
    // The old token still verifies: the JWT secret was kept in the database.
    hub.get(&a, "/user/current").await.expect(200);
    let a = hub.admin.clone();
    assert_eq!(hub.get(&a, "/device/keep-me").await.expect(200)["networkId"], n);
    assert_eq!(hub.get(&a, &format!("/device/keep-me/notification/{nid}")).await.expect(200)["notification"], "kept");
    assert_eq!(hub.get(&a, &format!("/device/keep-me/command/{cid}")).await.expect(200)["status"], "done");
    hub.login("survivor", "client-pass-1").await;
    // Ids keep growing after a restart.
    let nid2 = hub.post(&a, "/device/keep-me/notification", json!({"notification": "after"})).await.expect(201)["id"]
        .as_i64()
        .unwrap();
    assert!(nid2 > nid);
}

/// Without credentials nothing about the body is evaluated: 401 comes before 400 or 413.
#[tokio::test]
async fn anonymous_requests_get_401_before_any_body_error() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.limits.max_body_bytes = 64).await;
    for body in ["{not json", &format!("{{\"name\":\"{}\"}}", "x".repeat(200)), "{\"name\":\"ok\"}"] {
        for path in ["/network", "/device/d1/notification"] {
            let r = hub.client.post(hub.url(path)).body(body.to_string()).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 401, "POST {path} {body}");
        }
    }
    // Login still reads its body without a token.
    let r = hub.client.post(hub.url("/token")).body("{not json").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

/// Server timestamps never run ahead of the clock: when commits come faster than one per
/// millisecond the writer waits for the next millisecond (the batch keeps filling) instead of
/// stamping into the future. Every returned timestamp is no later than the clock read after the
/// response arrived, at thousands of inserts per second with one row per commit.
#[tokio::test]
async fn server_timestamps_never_run_ahead_of_the_clock() {
    skip_unless_backend!();
    let hub = TestHub::start_with(|s| s.database.batch_max_rows = 1).await;
    let n = hub.network("clock").await;
    hub.device("clock-dev", n).await;
    let shared = &hub;
    let workers = (0..50).map(|w| async move {
        let hub = shared;
        let mut ahead = Vec::new();
        for i in 0..60 {
            let body = json!({"notification": "tick", "parameters": {"w": w, "i": i}});
            let r = hub.post(&hub.admin, "/device/clock-dev/notification", body).await.expect(201);
            let after = chrono::Utc::now().timestamp_millis();
            let ts = hivehub::time::parse(r["timestamp"].as_str().unwrap()).unwrap();
            if ts > after {
                ahead.push(ts - after);
            }
        }
        ahead
    });
    let ahead: Vec<i64> = futures_util::future::join_all(workers).await.into_iter().flatten().collect();
    assert!(
        ahead.is_empty(),
        "{} of 3000 timestamps were ahead of the clock, by up to {:?} ms",
        ahead.len(),
        ahead.iter().max()
    );
    hub.stop().await;
}

/// A row the database refuses fails alone: the other rows of its group-commit batch are stored and
/// answered 201 — on PostgreSQL too, where a failed statement aborts the whole transaction (the
/// writer then runs the batch again with a savepoint per row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_fails_alone_in_its_batch() {
    skip_unless_backend!();
    const DEVICE: &str = "e50d6085-2aba-48e9-b1c3-73c673e414be";
    let hub = TestHub::start().await;
    let db = hub.db().await;
    if db.is_postgres() {
        db.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN IF NEW.notification = 'poison' THEN RAISE EXCEPTION 'poison'; END IF; RETURN NEW; END $$",
            &[],
        )
        .await;
        db.execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON device_notification \
             FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
            &[],
        )
        .await;
    } else {
        db.execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON device_notification \
             WHEN NEW.notification = 'poison' BEGIN SELECT RAISE(ABORT, 'poison'); END",
            &[],
        )
        .await;
    }
    db.close().await;
    // Concurrent inserts, every tenth poisoned, so the writer's batches mix both.
    let path = format!("/device/{DEVICE}/notification");
    let answers = futures_util::future::join_all((0..300).map(|i| {
        let name = if i % 10 == 0 { "poison" } else { "fine" };
        hub.post(&hub.admin, &path, json!({"notification": name, "parameters": {"i": i}}))
    }))
    .await;
    let mut expected = HashSet::new();
    for (i, r) in answers.into_iter().enumerate() {
        if i % 10 == 0 {
            r.expect_error(500, "Internal server error");
        } else {
            r.expect(201);
            expected.insert(i as i64);
        }
    }
    let stored = hub.get(&hub.admin, &format!("/device/{DEVICE}/notification?take=1000")).await.expect(200);
    let stored: HashSet<i64> = stored
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["notification"] != "$device-add")
        .map(|n| {
            assert_eq!(n["notification"], "fine");
            n["parameters"]["i"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(stored, expected);
    hub.stop().await;
}

/// A caller is answered only once its row has reached this instance's subscribers — on PostgreSQL
/// through the commit tail, while the writer already commits later batches. So a client that
/// subscribes right after its insert was answered, replaying from just before it, gets the row
/// exactly once (from the replay, never again live), however busy the writer is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_insert_is_not_pushed_again_to_a_later_subscription() {
    skip_unless_backend!();
    use crate::common::ws::Ws;
    use std::sync::atomic::{AtomicBool, Ordering};
    const DEVICE: &str = "e50d6085-2aba-48e9-b1c3-73c673e414be";
    let hub = TestHub::start().await;
    let path = format!("/device/{DEVICE}/notification");
    let stop = AtomicBool::new(false);
    // Other writers keep batches committing (and, on PostgreSQL, several in flight in the tail).
    let load = || async {
        while !stop.load(Ordering::Relaxed) {
            hub.post(&hub.admin, &path, json!({"notification": "load"})).await.expect(201);
        }
    };
    let probes = async {
        let mut ws = Ws::authenticated(&hub, &hub.admin).await;
        let mut before = hub.post(&hub.admin, &path, json!({"notification": "probe"})).await.expect(201)["timestamp"]
            .as_str()
            .unwrap()
            .to_string();
        for i in 0..30 {
            let n = hub.post(&hub.admin, &path, json!({"notification": "probe", "parameters": {"i": i}})).await;
            let n = n.expect(201);
            let sub = ws
                .subscribe(
                    "notification/subscribe",
                    json!({"deviceId": DEVICE, "names": ["probe"], "timestamp": before}),
                )
                .await;
            let push = ws.push().await;
            assert_eq!(push["subscriptionId"].as_u64(), Some(sub), "{push}");
            assert_eq!(push["notification"]["id"], n["id"], "the replay has the answered insert: {push}");
            ws.quiet(Duration::from_millis(100)).await;
            ws.ok("notification/unsubscribe", json!({"subscriptionId": sub}), &[]).await;
            before = n["timestamp"].as_str().unwrap().to_string();
        }
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(probes, load(), load(), load());
    hub.stop().await;
}

/// On SQLite the message writer's WAL is copied into the database file beside the writer, not by a
/// commit that takes it past SQLite's 1,000 pages (that checkpoint syncs the file in line, stalling
/// every message behind it): rows committed in far fewer pages reach the database file by themselves.
#[tokio::test]
async fn committed_rows_reach_the_sqlite_file_without_a_commit_checkpointing() {
    skip_unless_backend!();
    if super::TestHub::BACKEND != "sqlite" {
        return;
    }
    let hub = TestHub::start().await;
    let a = &hub.admin;
    hub.put(a, "/device/ckpt-1", json!({"name": "ckpt"})).await.expect(204);
    let db = hub.dir.path().join("hub.db");
    let size = || std::fs::metadata(&db).unwrap().len();
    // What the start-up wrote is checkpointed first; then the file stays as it is.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = size();
    // ~40 pages of overflowing rows (and their index pages): far under 1,000.
    let pad = "x".repeat(8_000);
    for i in 0..20 {
        hub.post(a, "/device/ckpt-1/notification", json!({"notification": "n", "parameters": {"i": i, "pad": pad}}))
            .await
            .expect(201);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while size() < before + 100_000 {
        assert!(std::time::Instant::now() < deadline, "the database file stayed at {} bytes (from {before})", size());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
